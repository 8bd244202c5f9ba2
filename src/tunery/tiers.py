"""GPU tiers: what a tier is, what each known card is called and assumed to reach, and
which tier this machine is.

A leaf module (it imports only ``tunery.environment``); the server's settings list tiers,
and the estimate reads their assumed throughput.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tunery.environment import TIER_ID_PATTERN, environment

MAX_DEVICES_PER_ATTEMPT = 64
"""The most devices (GPUs, or CPU processes) one run trains on at once."""


@dataclass(frozen=True)
class KnownTier:
    """What tunery knows of a tier id without settings: its card's name, what nvidia-smi
    calls it, the training throughput assumed until runs on it measured some, and the
    memory its card reports to CUDA."""

    name: str
    smi_name: str | None
    """A part of the name ``nvidia-smi`` prints for the card (None: not a GPU)."""
    assumed_tflops: float
    """About a third of the card's dense bf16 peak (LoRA steps are small matrix products and
    the loop syncs every step); for ``cpu``, about what the demo model reaches on two quiet
    cores (``tests/pipeline/test_estimate_accuracy.py``). The estimate of a run divides
    6 × parameters × tokens by it (``tunery.runs.estimate``)."""
    memory_gib: float | None
    """torch's ``total_memory`` of the card in GiB: what the memory planner lets a run use
    (None: runs are not checked). The A100 is the 80 GB card; a server with 40 GB A100s sets
    ``gpu_memory_gib: 39`` on its tier."""


KNOWN_TIERS = {
    "cpu": KnownTier("CPU", None, 0.04, None),
    "t4": KnownTier("NVIDIA T4", "T4", 20.0, 15.0),
    # Before l4: nvidia-smi's "NVIDIA L40S" contains "L4".
    "l40s": KnownTier("NVIDIA L40S", "L40S", 120.0, 44.0),
    "l4": KnownTier("NVIDIA L4", "L4", 40.0, 22.0),
    "a10g": KnownTier("NVIDIA A10G", "A10G", 40.0, 22.0),
    "a100": KnownTier("NVIDIA A100", "A100", 100.0, 79.0),
    "h100": KnownTier("NVIDIA H100", "H100", 300.0, 79.0),
    "h200": KnownTier("NVIDIA H200", "H200", 300.0, 139.0),
}


def tier_name(tier_id: str) -> str:
    """What users see for a tier the settings do not name: its card, else its id."""
    known = KNOWN_TIERS.get(tier_id)
    return known.name if known else tier_id.upper()


class TierSettings(BaseModel):
    """A kind of node and what a minute of training on it costs."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=TIER_ID_PATTERN, description="what recipes name as gpu_tier")
    name: str = Field(description="shown to users, e.g. NVIDIA T4")
    credits_per_minute: float = Field(ge=0, description="0 makes training on it free")
    gpus: int | None = Field(
        None,
        ge=0,
        le=MAX_DEVICES_PER_ATTEMPT,
        description="GPUs of one node a run trains on, data-parallel, one process each (a Ray "
        "cluster holds them together on one node); default 0 for cpu, else 1",
    )
    processes: int | None = Field(
        None,
        ge=1,
        le=MAX_DEVICES_PER_ATTEMPT,
        description="for a tier without GPUs: CPU processes a run trains on, data-parallel "
        "(gloo); default 1",
    )
    tflops: float | None = Field(
        None,
        gt=0,
        description="training TFLOPS a run's estimate assumes until runs on the tier measured "
        "it; default: KNOWN_TIERS' assumed throughput",
    )

    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="memory of the tier's card in GiB, against which a run's planned peak "
        "memory is checked before it queues; default: KNOWN_TIERS' card memory, none "
        "(no check) for cpu and unknown tiers",
    )

    @field_validator("processes")
    @classmethod
    def _processes_without_gpus(cls, processes: int | None, info: ValidationInfo) -> int | None:
        tier_id = info.data.get("id", "")
        if processes is not None and gpus_of(tier_id, info.data.get("gpus")) > 0:
            raise ValueError(
                f"is for tiers without GPUs; tier {tier_id} trains on one process per GPU "
                "(set gpus instead)"
            )
        return processes

    @property
    def devices(self) -> int:
        """Data-parallel processes a run of this tier trains on: one per GPU, or
        ``processes`` on CPU."""
        return self.gpus_per_attempt or self.processes or 1

    @property
    def memory_gib(self) -> float | None:
        """The card's memory a run must fit in; None when runs on this tier are not checked."""
        known = KNOWN_TIERS.get(self.id)
        return self.gpu_memory_gib or (known.memory_gib if known else None)

    @property
    def gpus_per_attempt(self) -> int:
        return gpus_of(self.id, self.gpus)

    @property
    def assumed_tflops(self) -> float | None:
        """The estimate's prior throughput; None for an unknown tier without ``tflops``."""
        known = KNOWN_TIERS.get(self.id)
        return self.tflops or (known.assumed_tflops if known else None)


def gpus_of(tier_id: str, gpus: int | None) -> int:
    """A tier's GPUs per run: ``gpus`` when set, else none for ``cpu`` and one otherwise."""
    if gpus is not None:
        return gpus
    return 0 if tier_id == "cpu" else 1


def detect_local_tier() -> str:
    """``TUNERY_LOCAL_TIER``, else ``cpu`` or the tier of this machine's first NVIDIA GPU.

    Detection runs nvidia-smi rather than importing torch.
    """
    configured = environment().local_tier
    if configured:
        return configured
    if shutil.which("nvidia-smi") is None:
        return "cpu"
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return tier_of_card(output.splitlines()[0] if output.strip() else "")


def tier_of_card(name: str) -> str:
    """The tier of a card by the name nvidia-smi prints for it; ``cpu`` for unknown cards."""
    name = name.upper()
    return next(
        (tier for tier, known in KNOWN_TIERS.items() if known.smi_name and known.smi_name in name),
        "cpu",
    )
