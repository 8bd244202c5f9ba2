"""The process's ``TUNERY_*`` variables, typed, and where the data dir is.

A leaf module (it imports only ``tunery.errors``), so the pipeline, the GGUF export, the CLI
and the server read their variables the same way. ``environment()`` reads them as they are
now; ``resolve_data_dir()`` is the one place the data dir is decided.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tunery.errors import ConfigError, FieldProblem, problems_from

ENV_PREFIX = "TUNERY_"
CHILD_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "XDG_CACHE_HOME",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "TOKENIZERS_PARALLELISM",
        f"{ENV_PREFIX}TORCH_THREADS",
        f"{ENV_PREFIX}TOOLCHAIN_DIR",
        f"{ENV_PREFIX}LLAMA_CPP_DIR",
    }
)
"""What a process the server starts (a local worker, a chat model's host) inherits from the
server's environment, by name: what Python, Hugging Face downloads and the GPU stack read.
The server's own secrets (its S3 keys, an admin's ``TUNERY_TOKEN``, a Ray token) stay with
the server: a child runs code and files that tenants chose."""
CHILD_PREFIXES = ("LC_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "CUDA_", "NVIDIA_", "PYTORCH_")
DEFAULT_DATA_DIR = Path("~/.tunery")
TIER_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class Environment(BaseSettings):
    """The ``TUNERY_*`` variables; each field is read from ``TUNERY_`` + its name in capitals.

    An empty variable counts as unset.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, str_strip_whitespace=True, extra="ignore"
    )
    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="the server's state directory: database, datasets, runs, Hub, admin token",
    )
    url: str | None = Field(None, description="the server the CLI talks to; else the local one")
    token: SecretStr | None = Field(
        None, description="the CLI's API token; else the admin token in the data dir"
    )
    toolchain_dir: Path | None = Field(
        None, description="cache of the GGUF converter; else ~/.cache/tunery/toolchain"
    )
    llama_cpp_dir: Path | None = Field(
        None, description="a llama.cpp checkout whose converter is used instead of the cache"
    )
    local_tier: str | None = Field(
        None, pattern=TIER_ID_PATTERN, description="this machine's tier; else detected (cpu, t4…)"
    )
    torch_threads: int | None = Field(None, ge=1, description="torch threads of a worker")

    @field_validator("url", "token", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("data_dir", "toolchain_dir", "llama_cpp_dir")
    @classmethod
    def _expand_home(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None


def environment() -> Environment:
    """The ``TUNERY_*`` variables as they are now; a bad value is a ConfigError naming it."""
    try:
        return Environment()
    except ValidationError as error:
        problems = [
            FieldProblem(f"{ENV_PREFIX}{problem.field.upper()}", problem.message)
            for problem in problems_from(error, whole="environment")
        ]
        raise ConfigError(problems, hint="fix or unset the variable") from None


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a process the server starts: this process's allow-listed
    variables (``CHILD_VARIABLES``, ``CHILD_PREFIXES``), and ``extra``."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if name in CHILD_VARIABLES or name.startswith(CHILD_PREFIXES)
    }
    return {**kept, **(extra or {})}


def resolve_data_dir(option: Path | None = None) -> Path:
    """The data dir: ``option`` when given, else ``TUNERY_DATA_DIR``, else ``~/.tunery``."""
    return option.expanduser() if option is not None else environment().data_dir
