"""Cancel in every non-terminal state: the run ends ``cancelled`` once, nothing is left."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from control_harness import (
    Client,
    Server,
    assert_one_terminal,
    group_gone,
    payload,
    wait_until,
)

pytestmark = pytest.mark.slow
LONG = {"max_steps": 400}  # never finishes within a test: it is always cancelled


def check_cancelled(
    api: Client,
    server: Server,
    run_id: str,
    response: Any,
    *,
    statuses: list[str],
    nodes_free: int = 1,
) -> dict[str, Any]:
    """Everything that must hold after a cancel, whatever state the run was in."""
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["phase"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert cancelled["cancel_requested"] is True
    assert cancelled["queue_position"] is None

    # Cancelling again is harmless and answers with the same cancelled run.
    again = api.cancel(run_id)
    assert again.status_code == 200, again.text
    assert {k: again.json()[k] for k in ("id", "status", "finished_at")} == {
        k: cancelled[k] for k in ("id", "status", "finished_at")
    }

    # Every worker process group of the run is gone within seconds; the node is free.
    attempts = server.attempts(run_id)
    for attempt in attempts:
        assert attempt["active"] == 0
        if attempt["pid"]:
            group_gone(attempt["pid"], timeout=15)
    wait_until(
        lambda: api.nodes_free() == nodes_free, timeout=15, what=f"{nodes_free} free node(s)"
    )

    # Nothing moves afterwards: no retry, no late completion from a dying worker.
    time.sleep(2.5)
    run = api.run(run_id)
    assert run["status"] == "cancelled"
    assert run["finished_at"] == cancelled["finished_at"]
    assert len(server.attempts(run_id)) == len(attempts)
    read = api.events(run_id, timeout=30)
    assert read.ended  # the stream of a terminal run ends
    assert read.statuses == statuses
    assert_one_terminal(read.events, "cancelled")

    # Billed whole minutes only: nothing for a short run; no artifacts, no Hub entry.
    assert run["metrics"]["credits"] == 0
    ledger = api.http.get("/credits").json()["ledger"]
    assert [row for row in ledger if row["run_id"] == run_id] == []
    assert run["hub_entry_id"] is None
    assert api.http.get("/hub").json() == []
    run_dir = server.root / "runs" / run_id
    assert list(run_dir.glob("*-lora.zip")) == []
    assert list(run_dir.glob("*-gguf.zip")) == []
    assert not (run_dir / "adapter").exists()
    return run


def test_cancel_queued(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    blocker = api.submit_ok(payload(dataset_id, "blocker", training=LONG))
    api.wait_status(blocker["id"], {"waiting_for_gpu", "training"}, timeout=60)
    queued = api.submit_ok(payload(dataset_id, "queued"))
    assert (queued["status"], queued["queue_position"]) == ("queued", 1)

    run = check_cancelled(
        api,
        server,
        queued["id"],
        api.cancel(queued["id"]),
        statuses=["queued", "cancelled"],
        nodes_free=0,  # the blocker still holds the only node
    )
    assert run["attempt"] == 0
    assert run["started_at"] is None
    assert server.attempts(queued["id"]) == []
    assert not (server.root / "runs" / queued["id"]).exists()
    # The blocker was untouched, and holds the node until it is cancelled too.
    assert api.run(blocker["id"])["status"] in {"waiting_for_gpu", "training"}
    api.cancel_ok(blocker["id"])
    for attempt in server.attempts(blocker["id"]):
        group_gone(attempt["pid"], timeout=15)
    wait_until(lambda: api.nodes_free() == 1, timeout=15, what="the node to be free")


def test_cancel_waiting_for_gpu(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    run = api.submit_ok(payload(dataset_id, "waiting", training=LONG))
    api.wait_status(run["id"], "waiting_for_gpu", timeout=60, interval=0.02)
    response = api.cancel(run["id"])
    cancelled = check_cancelled(
        api,
        server,
        run["id"],
        response,
        statuses=["queued", "waiting_for_gpu", "cancelled"],
    )
    assert cancelled["attempt"] == 1
    assert cancelled["metrics"]["step"] == 0
    (attempt,) = server.attempts(run["id"])
    assert attempt["end_reason"] == "cancelled"
    assert attempt["training_started_at"] is None


def test_cancel_training(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    run = api.submit_ok(payload(dataset_id, "training", training=LONG))
    api.wait_step(run["id"], 2, timeout=240)
    pid = server.worker_pid(run["id"])
    assert os.getpgid(pid) == pid  # the worker leads its own process group
    # An unfinished run can be neither deleted nor lose its dataset.
    assert api.http.delete(f"/runs/{run['id']}").status_code == 409
    assert api.http.delete(f"/datasets/{dataset_id}").status_code == 409

    cancelled = check_cancelled(
        api,
        server,
        run["id"],
        api.cancel(run["id"]),
        statuses=["queued", "waiting_for_gpu", "training", "cancelled"],
    )
    # Partial metrics are kept: the steps trained before the cancel.
    steps = [m["step"] for m in api.metrics(run["id"])]
    assert len(steps) >= 2
    assert steps == list(range(1, len(steps) + 1))
    assert 2 <= cancelled["metrics"]["step"] < 400
    assert cancelled["metrics"]["step"] == steps[-1]
    assert cancelled["metrics"]["billable_seconds"] > 0  # it trained, briefly: 0 credits
    (attempt,) = server.attempts(run["id"])
    assert attempt["end_reason"] == "cancelled"
    assert "status: cancelled" in api.logs(run["id"])
    assert api.http.delete(f"/datasets/{dataset_id}").status_code == 204
    assert api.http.delete(f"/runs/{run['id']}").status_code == 204


def test_cancel_retrying(
    start_server: Callable[..., Server], client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    server = start_server(retry_backoff_seconds=300)  # stays in retrying until cancelled
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    run = api.submit_ok(payload(dataset_id, "retrying", training=LONG))
    api.wait_step(run["id"], 1, timeout=240)
    os.kill(server.worker_pid(run["id"]), signal.SIGKILL)
    retrying = api.wait_status(run["id"], "retrying", timeout=30)
    assert retrying["error"]["code"] == "worker_lost"
    assert api.nodes_free() == 1  # a retrying run holds no node

    cancelled = check_cancelled(
        api,
        server,
        run["id"],
        api.cancel(run["id"]),
        statuses=["queued", "waiting_for_gpu", "training", "retrying", "cancelled"],
    )
    assert cancelled["attempt"] == 1
    assert cancelled["error"] is None
    (attempt,) = server.attempts(run["id"])
    assert attempt["end_reason"] == "process exited"


def test_cancel_of_a_failed_or_completed_run_is_409(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    """A run that fails on its own (a user error in the worker) is terminal too."""
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    # A local base model directory that exists but holds no loadable model fails in the
    # worker (not at submission): config.json is there, the weights are not.
    broken = server.root / "models" / "broken-model"  # the folder local models come from
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    run = api.submit_ok(payload(dataset_id, "broken", base_model=str(broken)))
    failed = api.wait_terminal(run["id"], timeout=240)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] and failed["error"]["message"]
    response = api.cancel(run["id"])
    assert response.status_code == 409, response.text
    assert api.run(run["id"])["status"] == "failed"
    assert_one_terminal(api.events(run["id"]).events, "failed")
    for attempt in server.attempts(run["id"]):
        group_gone(attempt["pid"], timeout=15)
    assert api.nodes_free() == 1
