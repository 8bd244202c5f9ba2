"""Fixtures for the control-plane tests: real servers on fresh data dirs, and clients.

Every server gets a fresh data dir whose catalog already holds the demo model (a symlink to
the cached build), a ``tunery.yaml`` with one CPU node and short retry back-off, and its own
free port. Teardown kills whatever worker process groups the attempts table names, so no
test leaves training processes behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import (
    Client,
    Server,
    in_process_app,
    in_process_cli,
    prepare_root,
    running_server,
    server_env,
)
from plane_studio import Studio

from tunery.settings import NodeSettings, Settings


@pytest.fixture
def start_server(tmp_path: Path, demo_model_dir: Path) -> Iterator[Callable[..., Server]]:
    """``start_server(**settings)``: a fresh server; settings override ``tunery.yaml``."""
    stack = contextlib.ExitStack()
    count = 0

    def start(**settings: Any) -> Server:
        nonlocal count
        count += 1
        root = prepare_root(tmp_path / f"data-{count}", demo_model_dir, **settings)
        return stack.enter_context(running_server(root, server_env(root)))

    with stack:
        yield start


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[Server]:
    """One server for a module's quick tests (they create no training runs, or cancel them)."""
    root = prepare_root(tmp_path_factory.mktemp("shared") / "data", demo_model_dir)
    with running_server(root, server_env(root)) as server:
        yield server


@pytest.fixture
def client_for() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(server: Server, token: str | None = None) -> Client:
        client = Client(server, token)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def studio(data_dir: Path) -> Iterator[Studio]:
    """The app in process on the in-memory backend with one CPU node (the scheduler off)."""
    settings = Settings.load(data_dir)
    settings.nodes = [NodeSettings(name="n0", tier="cpu")]
    with in_process_app(settings) as (http, token):
        yield Studio(http, http.app.state.plane, token)


@pytest.fixture
def dataset_id(studio: Studio, demo_dataset: Path) -> str:
    return studio.dataset(demo_dataset)


@pytest.fixture
def cli(studio: Studio, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli(*args)``: a ``tunery`` command whose client talks to the studio in process."""
    return in_process_cli(
        studio.http, studio.auth["Authorization"].removeprefix("Bearer "), monkeypatch
    )
