"""The names fine-tuned models go by on ``/v1`` (OpenAI's ``ft:`` form), shared by the run
object (``RunPublic.openai_model``), the OpenAI jobs and the chat endpoint."""

from __future__ import annotations


def fine_tuned_model_name(base_model: str, account_id: str, suffix: str, run_id: str) -> str:
    """OpenAI's ``ft:MODEL:ORG:SUFFIX:ID``; the chat endpoint resolves it by its last part."""
    return f"ft:{base_model}:{account_id}:{suffix}:{run_id}"


def run_id_of_model(name: str) -> str:
    """The run id a model name refers to: a ``ft:…:RUN_ID`` name, or the run id itself."""
    return name.rsplit(":", 1)[-1] if name.startswith("ft:") else name
