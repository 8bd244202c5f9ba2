"""Fixtures for the OpenAI API tests: a real ``tunery serve`` and the real ``openai`` SDK.

A module shares one server (``api_server``); ``sdk(server, token)`` is an ``OpenAI``
client on its ``/v1`` with the tunery token as the API key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import Server, prepare_root, running_server, server_env

openai = pytest.importorskip("openai", reason="the OpenAI API tests need the openai package")

# A job that trains for a few seconds on the demo model (through the ``tunery`` object).
QUICK = {
    "training": {"max_steps": 4, "checkpoint_every_steps": 2, "gradient_checkpointing": False},
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
    "export": {"gguf": False},
    "samples": {"max_new_tokens": 8},
}


@pytest.fixture(scope="session")
def quick() -> dict[str, Any]:
    """The ``tunery`` object of a job that trains for a few seconds (``QUICK``)."""
    return QUICK


@pytest.fixture(scope="session")
def validation_rows(tmp_path_factory: pytest.TempPathFactory, demo_dataset: Path) -> Path:
    """The first 40 demo rows: a validation file a job evaluates on quickly at every
    checkpoint (the whole demo file takes minutes per evaluation on a loaded machine)."""
    path = tmp_path_factory.mktemp("validation") / "validation.jsonl"
    path.write_text("".join(demo_dataset.read_text().splitlines(keepends=True)[:40]))
    return path


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Server]:
    # The webhook receiver listens on loopback, which the server refuses by default.
    root = prepare_root(
        tmp_path_factory.mktemp("openai") / "data",
        demo_model_dir,
        webhooks_to_private_addresses=True,
    )
    with running_server(root, server_env(root)) as server:
        yield server


@pytest.fixture
def sdk() -> Callable[..., Any]:
    def make(server: Server, token: str | None = None) -> Any:
        return openai.OpenAI(
            base_url=f"{server.url}/v1",
            api_key=token if token is not None else server.token,
            max_retries=0,
            timeout=60,
        )

    return make
