"""The probe's inputs that answered 500 (and closed the connection), against a real
``tunery serve``: each must now be a 400 or 422 naming what is wrong, on a connection the
client can keep using. The property test (``test_every_route_fuzzed.py``) throws the same
kinds of values at every other parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_harness import Client, Server, payload, prepare_root, running_server, server_env

AREA = "the probe's 500s: odd limits, cursors, numbers, nesting, URLs, id lists"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Server]:
    root = prepare_root(tmp_path_factory.mktemp("odd") / "data", demo_model_dir)
    with running_server(root, server_env(root)) as server:
        yield server


@pytest.fixture(scope="module")
def owned(server: Server, demo_dataset: Path) -> dict[str, str]:
    client = Client(server)
    try:
        dataset = client.dataset(demo_dataset)
        run = client.submit_ok(payload(dataset, "odd"))
        client.cancel_ok(run["id"])
    finally:
        client.close()
    return {"dataset": dataset, "job": run["id"]}


def probes(owned: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request arguments) of every input the probe saw answer 500."""
    job = owned["job"]
    pages = ["/v1/files", "/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{job}/events"]
    pages.append(f"/v1/fine_tuning/jobs/{job}/checkpoints")
    found: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", page, {"params": {"limit": limit}}) for page in pages for limit in ("²", "9" * 5000)
    ]
    for prefix, page in (("ftevent-", "events"), (f"ftckpt-{job}-", "checkpoints")):
        for after in ("9" * 30, "²", "9" * 5000):
            found.append(
                ("GET", f"/v1/fine_tuning/jobs/{job}/{page}", {"params": {"after": prefix + after}})
            )
    create = {"model": "tunery/demo-tiny", "training_file": owned["dataset"]}
    for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        body = {**create, "hyperparameters": {name: 10**400}}
        found.append(("POST", "/v1/fine_tuning/jobs", {"content": json.dumps(body)}))
    found.append(
        ("POST", "/v1/fine_tuning/jobs", {"json": {**create, "tunery": {"training": "x"}}})
    )
    nested = "[" * 100_000 + "]" * 100_000
    for route in ("/v1/fine_tuning/jobs", "/v1/chat/completions"):
        found.append(("POST", route, {"content": nested}))
    chat = {"model": job, "messages": [{"role": "user", "content": "hi"}]}
    for name in ("temperature", "top_p"):
        found.append(
            ("POST", "/v1/chat/completions", {"content": json.dumps({**chat, name: 10**400})})
        )
    found.append(("POST", "/api/v1/webhooks", {"json": {"url": "http://[::1"}}))
    many = {**payload(owned["dataset"], "many"), "dataset_ids": ["x"] * 250_000}
    found.append(("POST", "/api/v1/runs/estimate", {"json": many}))
    return found


def test_the_probes_500s_are_400s_on_a_kept_connection(
    server: Server, owned: dict[str, str], figures
) -> None:
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    wrong = []
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        for method, path, arguments in probes(owned):
            try:
                answer = http.request(method, path, **arguments)
            except httpx.TransportError as error:  # the connection dropped: a crash
                figures.answer(AREA, None, {400, 422})
                wrong.append((method, path[:60], str(arguments)[:80], repr(error)))
                continue
            kept = answer.headers.get("connection") != "close"
            figures.answer(AREA, answer, {400, 422})
            if answer.status_code not in (400, 422) or not kept:
                wrong.append((method, path[:60], str(arguments)[:80], answer.status_code, kept))
            else:
                assert len(answer.content) < 20_000, (path, len(answer.content))
    assert wrong == []
