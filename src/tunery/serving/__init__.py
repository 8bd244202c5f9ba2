"""Serving fine-tuned models, apart from the control plane.

Loaded GGUF models live in processes of their own (``host``: one model each, answering
one generation at a time with llama.cpp); the API process holds none of them. It streams
requests to and answers from them asynchronously (``pool``), within a memory budget and
unloading idle models, and admits chat requests fairly (``admission``: a cap on each
account's concurrent requests, a round-robin queue per model). ``generate`` is the
generation itself, run inside a host: OpenAI's chat parameters over llama.cpp's tokens.
"""
