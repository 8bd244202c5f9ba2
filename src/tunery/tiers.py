"""GPU tiers: what a tier is, what each known card is called and assumed to reach, and
which tier this machine is.

A leaf module (it imports only ``tunery.environment``); the server's settings list tiers,
and the estimate reads their assumed throughput.
"""

from __future__ import annotations

import shutil
import subprocess

from pydantic import BaseModel, ConfigDict, Field

from tunery.environment import TIER_ID_PATTERN, environment

GPU_TIERS = {
    "T4": "t4",
    "L4": "l4",
    "A10G": "a10g",
    "A100": "a100",
    "H100": "h100",
    "H200": "h200",
    "L40S": "l40s",
}
ASSUMED_TRAINING_TFLOPS = {
    "cpu": 0.04,
    "t4": 20.0,
    "l4": 40.0,
    "a10g": 40.0,
    "a100": 100.0,
    "l40s": 120.0,
    "h100": 300.0,
    "h200": 300.0,
}
"""Training throughput each tier is assumed to reach before any run measured it: about a
third of the card's dense bf16 peak (LoRA steps are small matrix products and the loop
syncs every step); for ``cpu``, about what the demo model reaches on two quiet cores
(``tests/pipeline/test_estimate_accuracy.py``). The estimate of
a run divides 6 × parameters × tokens by it (``tunery.runs.estimate``)."""
GPU_MEMORY_GIB = {
    "t4": 15.0,
    "l4": 22.0,
    "a10g": 22.0,
    "a100": 79.0,
    "l40s": 44.0,
    "h100": 79.0,
    "h200": 139.0,
}
"""Memory each known tier's card reports to CUDA (torch's ``total_memory``), in GiB: what
the memory planner lets a run use. The A100 entry is the 80 GB card; a server with 40 GB
A100s sets ``gpu_memory_gib: 39`` on its tier."""
TIER_NAMES = {
    "cpu": "CPU",
    "t4": "NVIDIA T4",
    "l4": "NVIDIA L4",
    "a10g": "NVIDIA A10G",
    "a100": "NVIDIA A100",
    "h100": "NVIDIA H100",
    "h200": "NVIDIA H200",
    "l40s": "NVIDIA L40S",
}


class TierSettings(BaseModel):
    """A kind of node and what a minute of training on it costs."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=TIER_ID_PATTERN, description="what recipes name as gpu_tier")
    name: str = Field(description="shown to users, e.g. NVIDIA T4")
    credits_per_minute: float = Field(ge=0, description="0 makes training on it free")
    gpus: int | None = Field(
        None, ge=0, description="GPUs an attempt asks a Ray cluster for; default 0 for cpu, else 1"
    )
    tflops: float | None = Field(
        None,
        gt=0,
        description="training TFLOPS a run's estimate assumes until runs on the tier measured "
        "it; default: ASSUMED_TRAINING_TFLOPS for known tiers",
    )

    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="memory of the tier's card in GiB, against which a run's planned peak "
        "memory is checked before it queues; default: GPU_MEMORY_GIB for known tiers, none "
        "(no check) for cpu and unknown tiers",
    )

    @property
    def memory_gib(self) -> float | None:
        """The card's memory a run must fit in; None when runs on this tier are not checked."""
        return self.gpu_memory_gib or GPU_MEMORY_GIB.get(self.id)

    @property
    def gpus_per_attempt(self) -> int:
        if self.gpus is not None:
            return self.gpus
        return 0 if self.id == "cpu" else 1

    @property
    def assumed_tflops(self) -> float | None:
        """The estimate's prior throughput; None for an unknown tier without ``tflops``."""
        return self.tflops or ASSUMED_TRAINING_TFLOPS.get(self.id)


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
    name = output.splitlines()[0].upper() if output.strip() else ""
    return next((tier for key, tier in GPU_TIERS.items() if key in name), "cpu")
