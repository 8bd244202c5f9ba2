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
storage:                     # where Hub artifacts live; default: kind local (DATA_DIR/hub)
  kind: s3                   # local | s3 (any S3-compatible store; pip install 'tunery[s3]')
  bucket: tunery-hub         # required for s3; must already exist
  prefix: hub/               # optional key prefix: objects are PREFIX/ENTRY_ID/ARTIFACT.zip
  endpoint_url: http://127.0.0.1:9000   # MinIO, Ceph, R2, SeaweedFS...; omit for AWS S3
  region: us-east-1          # optional; otherwise boto3's own configuration
  access_key_id: ...         # optional, with secret_access_key; otherwise boto3's normal
  secret_access_key: ...     # credential chain (AWS_ACCESS_KEY_ID..., profiles, roles)
```

With ``kind: s3`` downloads are presigned URLs of the store itself (SigV4, at most an hour),
so browsers fetch artifacts straight from the bucket, never through this server.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

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


S3_ONLY_FIELDS = (
    "bucket",
    "prefix",
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
)
PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


class StorageSettings(BaseModel):
    """Where Hub artifacts live: the server's disk, or a bucket of an S3-compatible store.

    Every field but ``kind`` belongs to ``kind: s3``; setting one for local storage is an
    error rather than silently ignored, since it most likely means ``kind: s3`` was forgotten.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "s3"] = "local"
    bucket: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        validate_default=True,
        description="an existing bucket (S3 naming rules); required for kind s3",
    )
    prefix: str = Field("", description="key prefix, e.g. hub/; stored with one trailing /")
    endpoint_url: str | None = Field(
        None, description="the store's base URL (MinIO, Ceph, R2...); omit for AWS S3"
    )
    region: str | None = Field(
        None, pattern=r"^[a-z0-9-]{1,32}$", description="signing region; else boto3's default"
    )
    access_key_id: str | None = Field(
        None, min_length=1, description="else boto3's credential chain (AWS_ACCESS_KEY_ID...)"
    )
    secret_access_key: SecretStr | None = Field(
        None, validate_default=True, description="set with access_key_id, or neither"
    )

    @field_validator("kind")
    @classmethod
    def _client_installed(cls, kind: str) -> str:
        # Checked here, not at first upload, so ``tunery serve`` refuses to start without it.
        if kind == "s3" and importlib.util.find_spec("boto3") is None:
            raise ValueError("kind s3 needs boto3, not installed: pip install 'tunery[s3]'")
        return kind

    @field_validator(*S3_ONLY_FIELDS)
    @classmethod
    def _only_for_s3(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("kind") == "local" and value not in (None, ""):
            raise ValueError("only used with kind: s3 (set storage.kind: s3, or remove it)")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket_for_s3(cls, bucket: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("kind") == "s3" and not bucket:
            raise ValueError("required with kind: s3")
        return bucket

    @field_validator("prefix")
    @classmethod
    def _normal_prefix(cls, prefix: str) -> str:
        """``hub``, ``/hub/`` and ``hub/`` all become ``hub/``; no empty, ``.`` or ``..`` part."""
        parts = prefix.strip("/").split("/") if prefix.strip("/") else []
        for part in parts:
            if part in (".", "..") or not PREFIX_SEGMENT.match(part):
                raise ValueError(
                    f"part {part!r} is not allowed: use letters, digits, '.', '_' and '-' "
                    "between single slashes"
                )
        return "".join(f"{part}/" for part in parts)

    @field_validator("endpoint_url")
    @classmethod
    def _http_endpoint(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ValueError("must be the store's base URL, without a path or query")
        return url.rstrip("/")

    @field_validator("secret_access_key")
    @classmethod
    def _keys_in_pairs(cls, secret: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        has_id = bool(info.data.get("access_key_id"))
        if has_id and secret is None:
            raise ValueError("required with access_key_id")
        if secret is not None and not has_id and "access_key_id" in info.data:
            raise ValueError("given without access_key_id: set both, or neither")
        return secret


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
    storage: StorageSettings = Field(default_factory=StorageSettings)

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
