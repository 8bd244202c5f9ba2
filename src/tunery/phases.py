"""What a run is doing inside its state: the phase vocabulary, written down once.

The pipeline emits the phases from ``LOADING_MODEL`` to ``SAMPLING``; the control plane sets
the others (a queued run, a node being provisioned, a back-off between attempts, a finished
or cancelled run). Every face (CLI, studio, API) reads the descriptions from here or from
``GET /api/v1/meta``; none keeps its own list. Torch-free, and imports nothing from the
control plane, so the pipeline may use it.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    QUEUED = "queued"
    PROVISIONING = "provisioning"
    LOADING_MODEL = "loading_model"
    PREPARING_DATA = "preparing_data"
    ATTACHING_LORA = "attaching_lora"
    TRAINING = "training"
    SAVING = "saving"
    EXPORTING = "exporting"
    SAMPLING = "sampling"
    BACKOFF = "backoff"
    PAUSED = "paused"
    DONE = "done"
    CANCELLED = "cancelled"


PHASE_DESCRIPTIONS: dict[Phase, str] = {
    Phase.QUEUED: "in the queue",
    Phase.PROVISIONING: "provisioning a node",
    Phase.LOADING_MODEL: "loading the model and tokenizer",
    Phase.PREPARING_DATA: "preparing the datasets",
    Phase.ATTACHING_LORA: "attaching the LoRA adapter",
    Phase.TRAINING: "running gradient steps",
    Phase.SAVING: "saving the adapter",
    Phase.EXPORTING: "exporting the GGUF",
    Phase.SAMPLING: "answering the sample prompts",
    Phase.BACKOFF: "waiting before the next attempt",
    Phase.PAUSED: "paused by its owner; resume continues from its checkpoint",
    Phase.DONE: "finished",
    Phase.CANCELLED: "cancelled",
}

PIPELINE_PHASES: tuple[Phase, ...] = (
    Phase.LOADING_MODEL,
    Phase.PREPARING_DATA,
    Phase.ATTACHING_LORA,
    Phase.TRAINING,
    Phase.SAVING,
    Phase.EXPORTING,
    Phase.SAMPLING,
)
"""The phases a worker may report, in the order a run passes through them."""
