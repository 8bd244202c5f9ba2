"""OpenAI's fine-tuning API on tunery: objects, the mapping onto runs, webhooks, serving.

Nothing here imports torch or FastAPI; the routes live in ``tunery.api.openai``.
"""
