"""Settings: the server's ``DATA_DIR/tunery.yaml``, typed.

A leaf module: it imports only ``tunery.errors``, ``tunery.environment`` (the ``TUNERY_*``
variables) and ``tunery.tiers``, and third-party libraries.

``Settings.load(data_dir)`` gives the server's settings from ``DATA_DIR/tunery.yaml``
(optional); a ``TUNERY_<FIELD>`` variable wins over the file (``TUNERY_LEASE_SECONDS=30``,
``TUNERY_STORAGE__SECRET_ACCESS_KEY=...`` for a nested field):

```yaml
tiers:                       # credits per minute of training; 0 switches billing off
  - {id: cpu, name: CPU, credits_per_minute: 1.0}
  - {id: t4, name: NVIDIA T4, credits_per_minute: 0, tflops: 20, gpu_memory_gib: 15}
                             # tflops: the estimate's prior; gpu_memory_gib: the card runs must fit
nodes:                       # default: one local node of the detected tier
  - {name: local-0, tier: cpu, backend: local}
cluster:                     # where attempts run; default kind local (this machine's nodes)
  kind: ray                  # local | ray (pip install 'tunery[ray]'; docs/ray.md)
  address: ray-head:6379     # for ray: the cluster's GCS address, or auto
  checkpoint_dir: /shared/tunery/checkpoints   # optional, for ray: a path every node shares
                                               # (default: checkpoints through the server)
  accelerators: {a100: A100} # optional: nodes Ray labels accelerator_type:A100 serve a100
admin_grant: 100             # credits granted to the first admin account
lease_seconds: 20            # a worker silent this long is lost
max_attempts: 3              # attempts per run before a transient failure is final
max_queued_runs_per_account: 50   # more queued runs of one account answer 429
dataset_quota_bytes: 21474836480  # datasets one account may keep (20 GiB); past it 413
failed_run_retention_hours: 168   # a failed or cancelled run's folder is removed after this
local_models_dir: /srv/models     # local base models only from here; default DATA_DIR/models
webhooks_to_private_addresses: false   # true lets webhooks reach loopback/private addresses
wandb:                       # W&B for runs with integrations: [{type: wandb, ...}]
  api_key: ...               # else the server's WANDB_API_KEY; mode offline needs none
  mode: online               # online | offline (files in dir, synced with `wandb sync`)
serving:                     # chat with fine-tuned models (/v1/chat/completions)
  memory_budget_mib: 4096    # loaded models together; idle ones are unloaded to make room
  idle_seconds: 300          # a model unused this long is unloaded
  max_concurrent_per_account: 4   # chat requests in flight per account; more answer 429
  queue_per_model: 32        # requests waiting for one model (round robin across accounts)
calibrate_estimates: true    # measure model shapes on local tiers for the estimate's prior
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
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from tunery.environment import ENV_PREFIX, resolve_data_dir
from tunery.errors import ConfigError, FieldProblem, problems_from
from tunery.tiers import TierSettings, detect_local_tier, tier_name

NESTED_DELIMITER = "__"
SETTINGS_FILE = "tunery.yaml"


class NodeSettings(BaseModel):
    """A place that runs one attempt at a time."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="unique name")
    tier: str = Field(description="the id of its tier; a tier missing from tiers is added")
    backend: Literal["local"] = Field("local", description="how attempts start on it")
    threads: int | None = Field(None, ge=1, description="torch threads for its worker")


class ClusterSettings(BaseModel):
    """Where attempts run: processes on this machine's nodes, or a Ray cluster.

    With ``kind: ray`` every node of the cluster needs tunery installed (``tunery[ray]``,
    the same version as the server) and the models its runs name; checkpoints travel
    through the server, or live in ``checkpoint_dir`` where every node mounts one at the
    same path; see docs/ray.md.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "ray"] = Field("local", description="local | ray")
    address: str | None = Field(
        None,
        min_length=1,
        validate_default=True,
        description="the Ray cluster's GCS address (HOST:PORT) or auto; required for kind ray",
    )
    checkpoint_dir: str | None = Field(
        None,
        min_length=1,
        validate_default=True,
        description="for kind ray: a directory every node reaches at this path (NFS, a "
        "shared volume) for checkpoints; default: checkpoints travel through the server",
    )
    accelerators: dict[str, str] = Field(
        default_factory=dict,
        description="tier id → Ray accelerator type (A100, T4…): nodes Ray labels with it "
        "serve the tier, as well as nodes with a tier:<id> resource",
    )

    @field_validator("address", "checkpoint_dir")
    @classmethod
    def _only_for_ray(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if value is not None and kind == "local":
            raise ValueError("only used with kind: ray (remove it for kind: local)")
        if value is None and kind == "ray" and info.field_name == "address":
            raise ValueError("required with kind: ray")
        if value is not None and info.field_name == "checkpoint_dir" and not value.startswith("/"):
            raise ValueError("must be an absolute path (the same on every node)")
        return value

    @field_validator("kind")
    @classmethod
    def _client_installed(cls, kind: str) -> str:
        # Checked here, not at the first placement, so ``tunery serve`` refuses to start.
        if kind == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("kind ray needs ray, not installed: pip install 'tunery[ray]'")
        return kind


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
    kind: Literal["local", "s3"] = Field(
        "local", description="local (DATA_DIR/hub) | s3 (an S3-compatible store)"
    )
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


class ServingSettings(BaseModel):
    """Chat with fine-tuned models: serving processes, memory, and fair admission."""

    model_config = ConfigDict(extra="forbid")
    memory_budget_mib: int = Field(
        4096,
        ge=64,
        description="resident memory all loaded models may take together; the least "
        "recently used idle ones are unloaded to make room",
    )
    idle_seconds: float = Field(
        300.0, gt=0, description="a model nobody chatted with for this long is unloaded"
    )
    context_tokens: int = Field(
        2048, ge=256, le=131072, description="the context each loaded model gets"
    )
    threads: int | None = Field(
        None, ge=1, description="llama.cpp threads per serving process; default half the cores"
    )
    max_concurrent_per_account: int = Field(
        4,
        ge=1,
        description="chat requests one account may have in flight; more answer 429 with "
        "Retry-After",
    )
    queue_per_model: int = Field(
        32,
        ge=2,
        description="requests that may wait for one model; more answer 429 (it must be "
        "larger than max_concurrent_per_account, so one account cannot fill it)",
    )
    load_timeout_seconds: float = Field(
        120.0, gt=0, description="how long loading a model may take before it is refused"
    )

    @model_validator(mode="after")
    def _one_account_cannot_fill_a_queue(self) -> ServingSettings:
        if self.queue_per_model <= self.max_concurrent_per_account:
            raise ValueError(
                f"queue_per_model ({self.queue_per_model}) must be larger than "
                f"max_concurrent_per_account ({self.max_concurrent_per_account})"
            )
        return self


class WandbServerSettings(BaseModel):
    """Weights & Biases for runs that ask for it (``integrations``): the key and mode their
    workers log with. Unset fields fall back to the server's ``WANDB_API_KEY``,
    ``WANDB_MODE`` and ``WANDB_BASE_URL``; without a key W&B is off, unless the mode is
    ``offline`` (files only, synced later with ``wandb sync``)."""

    model_config = ConfigDict(extra="forbid")
    api_key: SecretStr | None = Field(None, description="else WANDB_API_KEY of the server")
    mode: Literal["online", "offline"] | None = Field(
        None, description="online | offline; else WANDB_MODE of the server, else online"
    )
    base_url: str | None = Field(
        None, description="a self-hosted W&B server; else WANDB_BASE_URL, else W&B's cloud"
    )
    dir: str | None = Field(
        None,
        description="where workers keep W&B's files (a path on the workers' nodes; offline "
        "runs stay there to be synced); default a scratch directory per attempt",
    )

    def access(self) -> dict[str, str] | None:
        """What a worker logs with (key, mode, URL, folder), or None when W&B is off."""
        key = self.api_key.get_secret_value() if self.api_key else os.environ.get("WANDB_API_KEY")
        mode = self.mode or os.environ.get("WANDB_MODE") or "online"
        if mode not in ("online", "offline") or (mode == "online" and not key):
            return None
        found = {
            "api_key": key,
            "mode": mode,
            "base_url": self.base_url or os.environ.get("WANDB_BASE_URL"),
            "dir": self.dir,
        }
        return {name: value for name, value in found.items() if value}


class Settings(BaseSettings):
    """The server's settings: ``TUNERY_<FIELD>`` variables over ``DATA_DIR/tunery.yaml``.

    Build it with ``load``: it also adds a node of this machine's tier when none is listed,
    a tier for every node, and reports every problem as a ConfigError. Built directly, as
    tests do, it takes the given fields over the variables and the file, and nothing more.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_ignore_empty=True,
        extra="forbid",
    )
    data_dir: Path = Field(description="state directory; tunery.yaml is read from it")
    tiers: list[TierSettings] = Field(
        default_factory=list, description="what each kind of node costs; nodes' tiers are added"
    )
    nodes: list[NodeSettings] = Field(
        default_factory=list,
        description="where attempts run with cluster kind local; default one local-0 node",
    )
    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings, description="local nodes, or a Ray cluster"
    )
    admin_grant: float = Field(
        100.0, ge=0, description="credits granted to the first admin account"
    )
    lease_seconds: float = Field(20.0, gt=1, description="a worker silent this long is lost")
    heartbeat_seconds: float = Field(2.0, gt=0, description="how often a worker reports, at least")
    max_attempts: int = Field(
        3, ge=1, description="attempts per run before a transient failure is final"
    )
    retry_backoff_seconds: float = Field(
        2.0, ge=0, description="wait before the second attempt; doubles for each further one"
    )
    cancel_grace_seconds: float = Field(
        3.0, ge=0, description="how long a stopped worker may wind down before it is killed"
    )
    storage: StorageSettings = Field(
        default_factory=StorageSettings, description="where Hub artifacts live"
    )
    max_queued_runs_per_account: int = Field(
        50, ge=1, description="queued runs one account may have; a submission past it is a 429"
    )
    dataset_quota_bytes: int = Field(
        20 * 2**30, ge=0, description="bytes of datasets one account may keep; past it a 413"
    )
    failed_run_retention_hours: float = Field(
        168.0,
        ge=0,
        description="how long a failed or cancelled run's folder (checkpoints, logs) is kept",
    )
    local_models_dir: Path | None = Field(
        None,
        description="the only directory local base models may come from; else DATA_DIR/models",
    )
    serving: ServingSettings = Field(
        default_factory=ServingSettings, description="chat with fine-tuned models"
    )
    calibrate_estimates: bool = Field(
        True,
        description="measure each model shape on each local tier with a micro-benchmark (a "
        "few seconds, once, while the tier's nodes are free) as the estimate's prior, instead "
        "of the tier's assumed TFLOPS",
    )
    wandb: WandbServerSettings = Field(
        default_factory=WandbServerSettings,
        description="Weights & Biases for runs that ask for it (integrations)",
    )
    webhooks_to_private_addresses: bool = Field(
        False,
        description="let webhook endpoints be loopback, private or link-local addresses (one "
        "trusted team on one host, tests); off, no account can make the server call the "
        "services of its own network",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, SettingsFile(settings_cls))

    @field_validator("data_dir")
    @classmethod
    def _expand_home(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("nodes", "tiers")
    @classmethod
    def _unique(cls, items: list[Any], info: ValidationInfo) -> list[Any]:
        """Nodes are told apart by name and tiers by id: a second one would be ignored."""
        key = "name" if info.field_name == "nodes" else "id"
        seen: set[str] = set()
        for item in items:
            value = getattr(item, key)
            if value in seen:
                raise ValueError(f"{key} {value!r} appears twice; each {key} must be unique")
            seen.add(value)
        return items

    @classmethod
    def load(cls, data_dir: Path | None = None) -> Settings:
        """The settings of ``data_dir`` (default: ``resolve_data_dir()``), defaults filled in."""
        root = resolve_data_dir(data_dir)
        path = root / SETTINGS_FILE
        try:
            settings = cls(data_dir=root)
        except SettingsError as error:
            # pydantic-settings raises this for a variable that is not the JSON a list needs.
            raise ConfigError.single(
                f"{ENV_PREFIX}* variables",
                str(error),
                hint=f"give a list as JSON, a nested field as {ENV_PREFIX}SECTION__FIELD",
            ) from None
        except ValidationError as error:
            problems = [
                FieldProblem(source_of(problem.field), problem.message)
                for problem in problems_from(error, whole="settings")
            ]
            from_file = [p for p in problems if not p.field.startswith(ENV_PREFIX)]
            hint = f"fix {path}" if from_file else "fix or unset the variables named"
            if from_file and len(from_file) < len(problems):
                hint += " and the variables named"
            raise ConfigError(problems, hint=hint) from None
        if not settings.nodes and settings.cluster.kind == "local":
            tier = detect_local_tier()
            settings.nodes = [NodeSettings(name="local-0", tier=tier)]
        known = {tier.id for tier in settings.tiers}
        for node in settings.nodes:
            if node.tier not in known:
                default_price = 1.0 if node.tier == "cpu" else 0.0
                settings.tiers.append(
                    TierSettings(
                        id=node.tier,
                        name=tier_name(node.tier),
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

    @property
    def models_dir(self) -> Path:
        """Where submissions may name local base models from (``local_models_dir``)."""
        return (self.local_models_dir or self.data_dir / "models").expanduser()


class SettingsFile(PydanticBaseSettingsSource):
    """``DATA_DIR/tunery.yaml`` (optional), for the ``data_dir`` the sources before it gave."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Required by the base class; __call__ reads the whole file at once instead.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        given = self.current_state.get("data_dir")
        path = resolve_data_dir(Path(given) if given is not None else None) / SETTINGS_FILE
        if not path.is_file():
            return {}
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError.single(str(path), f"not valid YAML: {error}") from None
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError.single(str(path), "must be a mapping of settings")
        return raw


def source_of(field: str) -> str:
    """``field`` as the variable that set it, when one did, else as written in tunery.yaml."""
    parts = field.split(".")
    for end in range(len(parts), 0, -1):
        name = ENV_PREFIX + NESTED_DELIMITER.join(parts[:end]).upper()
        if name in os.environ:
            return name if end == len(parts) else f"{name} ({field})"
    return field
