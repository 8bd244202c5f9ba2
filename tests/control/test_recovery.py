"""Crashes: a worker or the whole server killed with SIGKILL mid-training; the run still
completes, resumed from its checkpoint or found again by the restarted server."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from control_harness import (
    Client,
    EventRead,
    Server,
    Watcher,
    assert_one_terminal,
    payload,
    prepare_root,
    running_server,
    server_env,
    status_events,
    take_over_attempt,
    wait_until,
    worker_alive,
)

pytestmark = pytest.mark.slow


def attempt_started(server: Server, run_id: str) -> str:
    return server.attempts(run_id)[0]["started"]


def newest_checkpoint(run_dir: Path) -> int | None:
    steps = [
        int(path.name.removeprefix("step-"))
        for path in (run_dir / "checkpoints").glob("step-*")
        if (path / "COMPLETE").is_file()
    ]
    return max(steps, default=None)


def test_worker_sigkill_retries_and_resumes_from_checkpoint(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    total = 24
    run = api.submit_ok(
        payload(dataset_id, "resumed", training={"max_steps": total, "checkpoint_every_steps": 2})
    )
    run_id = run["id"]
    run_dir = server.root / "runs" / run_id
    api.wait_status(run_id, "training", timeout=240)
    pid = server.worker_pid(run_id)

    # Kill once a complete checkpoint exists and the server has seen a step past it.
    def past_a_checkpoint() -> bool:
        checkpoint = newest_checkpoint(run_dir)
        return checkpoint is not None and api.run(run_id)["metrics"]["step"] > checkpoint

    wait_until(past_a_checkpoint, timeout=240, interval=0.05, what="a step past a checkpoint")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not worker_alive(pid, attempt_started(server, run_id)), timeout=10)
    checkpoint = newest_checkpoint(run_dir)  # nothing writes checkpoints any more
    assert checkpoint is not None and checkpoint < total
    assert api.run(run_id)["status"] in {"training", "retrying", "waiting_for_gpu"}

    done = api.wait_terminal(run_id, timeout=400)
    assert done["status"] == "completed", done
    assert done["attempt"] == 2
    assert (done["metrics"]["step"], done["metrics"]["total_steps"]) == (total, total)
    assert done["error"] is None

    read = api.events(run_id)
    assert read.statuses == [
        "queued",
        "waiting_for_gpu",
        "training",
        "retrying",
        "waiting_for_gpu",
        "training",
        "completed",
    ]
    assert_one_terminal(read.events, "completed")
    lost = next(e for e in status_events(read.events) if e.data["status"] == "retrying")
    assert lost.data["error"]["code"] == "worker_lost"

    # The second attempt resumed from the newest complete checkpoint at the kill.
    logs = api.logs(run_id)
    match = re.search(r"resumed from the checkpoint at step (\d+)", logs)
    assert match, logs
    resumed = int(match.group(1))
    assert resumed == checkpoint
    assert logs.count("resumed from the checkpoint") == 1
    assert "status: retrying" in logs

    # Every step was trained; the second attempt reported from the resumed step on.
    retry_id = lost.id
    steps_after = [
        e.data["step"]
        for e in read.events
        if e.kind == "metrics" and e.id > retry_id and not e.data.get("replayed")
    ]
    assert steps_after == sorted(steps_after), steps_after
    assert set(steps_after) == set(range(resumed + 1, total + 1)), (resumed, steps_after)
    assert {m["step"] for m in api.metrics(run_id)} == set(range(1, total + 1))
    history = api.metrics(run_id)

    first, second = server.attempts(run_id)
    assert (first["number"], second["number"]) == (1, 2)
    assert first["end_reason"] == "process exited"
    assert second["end_reason"] == "finished"
    assert first["pid"] == pid != second["pid"]
    assert (run_dir / "attempt-1.log").is_file()
    assert (run_dir / "attempt-2.log").is_file()
    assert done["metrics"]["billable_seconds"] > 0
    assert api.nodes_free() == 1

    # The metrics history is the run's: each step once, as after a server restart. The steps
    # between the checkpoint and the kill were trained twice; the chart shows them once.
    assert [m["step"] for m in history] == list(range(1, total + 1))


def test_a_resumed_attempts_history_fills_only_steps_never_reported(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    """The next attempt sends the checkpoint's history; the server stores only the steps
    its predecessor died before reporting, and never overwrites a reported one."""
    api = client_for(server)
    run = api.submit_ok(payload(api.dataset(demo_dataset), "history", training={"max_steps": 5000}))
    api.wait_step(run["id"], 3)
    attempt_id, token = take_over_attempt(server, run["id"])
    attempt = {"id": attempt_id, "token": token}
    first = api.metrics(run["id"])[0]
    history = [{**first, "loss": 99.0}, {**first, "step": 4000, "loss": 0.5}]
    response = httpx.post(
        f"{server.url}/internal/attempts/{attempt['id']}/events",
        headers={"X-Attempt-Token": attempt["token"]},
        json={"events": [{"kind": "history", "data": {"steps": history}}]},
    )
    assert response.status_code == 200, response.text
    by_step = {row["step"]: row for row in api.metrics(run["id"])}
    assert by_step[1]["loss"] == first["loss"]
    for malformed in ("not a list", [1, 2], None):
        refused = httpx.post(
            f"{server.url}/internal/attempts/{attempt['id']}/events",
            headers={"X-Attempt-Token": attempt["token"]},
            json={"events": [{"kind": "history", "data": {"steps": malformed}}]},
        )
        assert refused.status_code == 422
        assert refused.json()["detail"]["problems"][0]["field"] == "events.data.steps"
    assert (by_step[4000]["loss"], by_step[4000]["replayed"]) == (0.5, True)
    api.cancel_ok(run["id"])


def test_a_retrying_run_keeps_its_place_ahead_of_later_runs(
    start_server: Callable[..., Server], client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    server = start_server(retry_backoff_seconds=4)
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    first = api.submit_ok(payload(dataset_id, "first", training={"max_steps": 16}))
    api.wait_step(first["id"], 2)
    later = api.submit_ok(payload(dataset_id, "later", training={"max_steps": 3}))
    os.kill(server.worker_pid(first["id"]), signal.SIGKILL)
    api.wait_status(first["id"], "retrying", timeout=30)

    # The node is free during the back-off, yet the later run does not take it.
    assert api.run(later["id"])["status"] == "queued"
    assert api.wait_terminal(first["id"], timeout=300)["status"] == "completed"
    assert api.wait_terminal(later["id"], timeout=300)["status"] == "completed"
    (later_attempt,) = server.attempts(later["id"])
    first_attempts = server.attempts(first["id"])
    assert len(first_attempts) == 2
    assert later_attempt["started_at"] >= first_attempts[1]["ended_at"]


@pytest.mark.parametrize(
    "finish_while_down",
    [False, True],
    ids=["restart-mid-training", "run-finishes-while-server-is-down"],
)
def test_server_sigkill_mid_training_then_restart_completes(
    server: Server,
    client_for: Callable[..., Client],
    demo_dataset: Path,
    finish_while_down: bool,
) -> None:
    """Workers outlive the server: after a restart the run completes on its first attempt,
    with every event the worker produced while nobody listened, and the stream resumes."""
    api = client_for(server)
    token = server.token
    dataset_id = api.dataset(demo_dataset)
    total = 40
    run = api.submit_ok(payload(dataset_id, "survivor", training={"max_steps": total}))
    run_id = run["id"]
    run_dir = server.root / "runs" / run_id
    watcher = Watcher(api, run_id)
    watcher.start()
    seen = api.wait_step(run_id, 1, timeout=240)["metrics"]["step"]
    pid = server.worker_pid(run_id)
    (attempt,) = server.attempts(run_id)

    server.kill()
    before: EventRead = watcher.result(timeout=30)
    assert not before.ended  # the stream broke; it did not end
    assert before.events
    assert worker_alive(pid, attempt["started"]), "the worker died with the server"
    if finish_while_down:
        # The worker trains, saves and samples (its checkpoints go once the adapter is
        # saved); only its bundle upload and final report wait for a server.
        wait_until(lambda: newest_checkpoint(run_dir), timeout=120, what="a checkpoint")
        wait_until(lambda: newest_checkpoint(run_dir) is None, timeout=300, what="training to end")
    else:
        # The worker trains on (its checkpoints show it) and queues reports nobody takes.
        wait_until(
            lambda: (newest_checkpoint(run_dir) or 0) > seen + 2,
            timeout=120,
            interval=0.02,
            what="training progress while the server is down",
        )
        assert newest_checkpoint(run_dir), "the run finished while the server was down"
    assert worker_alive(pid, attempt["started"])

    server.start()
    assert server.token == token  # no second admin account on restart
    after = api.events(run_id, last_event_id=before.events[-1].id, timeout=400)
    assert after.ended
    done = api.run(run_id)
    assert done["status"] == "completed", done
    assert done["attempt"] == 1
    assert done["metrics"]["step"] == total

    # The stream resumed across the restart without a gap or a duplicate.
    replay = api.events(run_id)
    assert before.ids + after.ids == replay.ids
    assert len(set(replay.ids)) == len(replay.ids)
    assert replay.statuses == ["queued", "waiting_for_gpu", "training", "completed"]
    assert_one_terminal(replay.events, "completed")
    (attempt,) = server.attempts(run_id)
    assert (attempt["pid"], attempt["end_reason"]) == (pid, "finished")
    wait_until(lambda: not worker_alive(pid, attempt["started"]), timeout=30)
    assert api.nodes_free() == 1
    # Nothing the worker reported while the server was down was lost: every step once,
    # in order, and the phases and log lines after training.
    assert [m["step"] for m in api.metrics(run_id)] == list(range(1, total + 1))
    phases = [e.data["phase"] for e in replay.events if e.kind == "phase"]
    assert phases[-2:] == ["saving", "sampling"], phases
    assert "saved survivor-lora.zip" in api.logs(run_id)


def test_restarted_server_declares_a_worker_lost_while_it_was_down(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    """Both crash: the server and its worker. The restarted server retries the run."""
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    total = 30
    run = api.submit_ok(
        payload(dataset_id, "orphan", training={"max_steps": total, "checkpoint_every_steps": 2})
    )
    run_id = run["id"]
    api.wait_step(run_id, 1, timeout=240)
    pid = server.worker_pid(run_id)
    server.kill()
    os.kill(pid, signal.SIGKILL)
    server.start()
    done = api.wait_terminal(run_id, timeout=400)
    assert done["status"] == "completed", done
    assert done["attempt"] == 2
    statuses = api.events(run_id).statuses
    assert statuses[-4:] == ["retrying", "waiting_for_gpu", "training", "completed"]
    assert statuses.count("retrying") == 1


def test_workers_use_the_servers_data_dir(
    tmp_path: Path, demo_model_dir: Path, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    """``tunery serve --data-dir DIR`` without TUNERY_DATA_DIR: workers find the demo model
    in DIR's catalog and write nothing under the home directory."""
    root = prepare_root(tmp_path / "data", demo_model_dir)
    home = tmp_path / "home"
    home.mkdir()
    env = server_env(None)
    env["HOME"] = str(home)
    with running_server(root, env) as server:
        api = client_for(server)
        run = api.submit_ok(payload(api.dataset(demo_dataset), "home"))
        try:
            wait_until(
                lambda: (
                    (home / ".tunery").exists()
                    or api.run(run["id"])["status"] in {"training", "completed", "failed"}
                ),
                timeout=240,
                what="the worker to load its model",
            )
            assert not (home / ".tunery").exists(), sorted(
                str(p.relative_to(home)) for p in home.rglob("*")
            )
        finally:
            api.cancel_ok(run["id"])
