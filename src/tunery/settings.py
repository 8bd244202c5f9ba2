"""Server settings: where state lives, which nodes exist, what tiers cost.

``Settings.load(data_dir)`` reads ``DATA_DIR/tunery.yaml`` when present:

```yaml
tiers:                       # credits per minute of training; 0 switches billing off
  - {id: cpu, name: CPU, credits_per_minute: 1.0}
  - {id: t4, name: NVIDIA T4, credits_per_minute: 0}
nodes:                       # default: one local node of the detected tier
  - {name: local-0, tier: cpu, backend: local}
admin_grant: 100             # credits granted to the first admin account
lease_seconds: 20            # a worker silent this long is lost
max_attempts: 3              # attempts per run before a transient failure is final
```
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunery.errors import ConfigError
from tunery.pipeline.config import problems_from

GPU_TIERS = {
    "T4": "t4",
    "L4": "l4",
    "A10G": "a10g",
    "A100": "a100",
    "H100": "h100",
    "H200": "h200",
    "L40S": "l40s",
}
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
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    name: str
    credits_per_minute: float = Field(ge=0)


class NodeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    tier: str
    backend: Literal["local"] = "local"
    threads: int | None = Field(None, ge=1, description="torch threads for its worker")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: Path
    tiers: list[TierSettings] = Field(default_factory=list)
    nodes: list[NodeSettings] = Field(default_factory=list)
    admin_grant: float = Field(100.0, ge=0)
    lease_seconds: float = Field(20.0, gt=1)
    heartbeat_seconds: float = Field(2.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_backoff_seconds: float = Field(2.0, ge=0)
    cancel_grace_seconds: float = Field(3.0, ge=0)

    @classmethod
    def load(cls, data_dir: Path) -> Settings:
        """Settings from ``data_dir/tunery.yaml`` (optional), with detected defaults."""
        path = data_dir / "tunery.yaml"
        raw: dict = {}
        if path.is_file():
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as error:
                raise ConfigError.single(str(path), f"not valid YAML: {error}") from None
            if not isinstance(raw, dict):
                raise ConfigError.single(str(path), "must be a mapping of settings")
        try:
            settings = cls.model_validate({**raw, "data_dir": data_dir})
        except ValidationError as error:
            raise ConfigError(problems_from(error), hint=f"fix {path}") from None
        if not settings.nodes:
            tier = detect_local_tier()
            settings.nodes = [NodeSettings(name="local-0", tier=tier)]
        known = {tier.id for tier in settings.tiers}
        for node in settings.nodes:
            if node.tier not in known:
                default_price = 1.0 if node.tier == "cpu" else 0.0
                settings.tiers.append(
                    TierSettings(
                        id=node.tier,
                        name=TIER_NAMES.get(node.tier, node.tier.upper()),
                        credits_per_minute=default_price,
                    )
                )
                known.add(node.tier)
        return settings

    def tier(self, tier_id: str) -> TierSettings | None:
        return next((tier for tier in self.tiers if tier.id == tier_id), None)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "tunery.db"


def detect_local_tier() -> str:
    """``cpu``, or the tier of this machine's first NVIDIA GPU (without importing torch)."""
    if os.environ.get("TUNERY_LOCAL_TIER"):
        return os.environ["TUNERY_LOCAL_TIER"]
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
