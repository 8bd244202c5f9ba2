"""Runs on a tier of two CPU processes (``processes: 2``, gloo) through a real server and the
local pool: the worker starts the ranks and speaks for them; one rank SIGKILLed ends the
attempt on every rank at once and the run retries and completes; cancel leaves no process."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from control_harness import Client, Server, group_gone, payload, status_events, wait_until

from tunery.backends.local import group_members

pytestmark = pytest.mark.slow
PAIR = {"tiers": [{"id": "cpu", "name": "CPU", "credits_per_minute": 1.0, "processes": 2}]}


def ranks_of(worker: int) -> list[int]:
    """The rank processes in the worker's process group (started by multiprocessing's spawn;
    its resource tracker is there too)."""
    ranks = []
    for pid in group_members(worker):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ranks.append(pid)
        except OSError:
            continue
    return sorted(ranks)


def test_a_run_trains_on_both_processes_of_its_tier(
    start_server: Callable[..., Server], client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    server = start_server(**PAIR)
    api = client_for(server)
    run = api.submit_ok(payload(api.dataset(demo_dataset), "pair"))
    worker = server.worker_pid(run["id"], timeout=240)
    wait_until(lambda: len(ranks_of(worker)) == 2, timeout=120, what="two ranks")
    done = api.wait_terminal(run["id"], timeout=300)
    assert done["status"] == "completed", done
    assert [m["step"] for m in api.metrics(run["id"])] == list(range(1, 7))
    assert "training on 2 processes of this node, batch 4 per process" in api.logs(run["id"])
    group_gone(worker)


def test_a_killed_rank_ends_the_attempt_at_once_and_the_run_retries_and_completes(
    start_server: Callable[..., Server], client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    server = start_server(**PAIR)
    api = client_for(server)
    total = 30
    body = payload(api.dataset(demo_dataset), "pair-kill", training={"max_steps": total})
    run_id = api.submit_ok(body)["id"]
    api.wait_step(run_id, 4, timeout=240)
    worker = server.worker_pid(run_id)
    ranks = ranks_of(worker)
    assert len(ranks) == 2
    os.kill(ranks[-1], signal.SIGKILL)
    killed = time.monotonic()

    # The worker ends every rank and says so before the lease (15 s) could have expired.
    group_gone(worker, timeout=10)
    assert time.monotonic() - killed < 15
    done = api.wait_terminal(run_id, timeout=400)
    assert done["status"] == "completed", done
    (retrying,) = [
        event.data
        for event in status_events(api.events(run_id).events)
        if event.data["status"] == "retrying"
    ]
    assert retrying["error"]["code"] == "rank_lost"
    assert "ended without finishing (killed by SIGKILL)" in retrying["error"]["message"]
    assert done["attempt"] == 2
    assert {m["step"] for m in api.metrics(run_id)} == set(range(1, total + 1))
    resumed = re.search(r"resumed from the checkpoint at step (\d+)", api.logs(run_id))
    assert resumed is not None and int(resumed[1]) >= 2
    second = server.attempts(run_id)[1]["pid"]
    assert second != worker
    group_gone(second)


def test_cancel_leaves_no_rank_behind(
    start_server: Callable[..., Server], client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    server = start_server(**PAIR)
    api = client_for(server)
    body = payload(api.dataset(demo_dataset), "pair-cancel", training={"max_steps": 400})
    run_id = api.submit_ok(body)["id"]
    api.wait_step(run_id, 2, timeout=240)
    worker = server.worker_pid(run_id)
    assert len(ranks_of(worker)) == 2
    assert api.cancel(run_id).status_code == 200
    assert api.wait_terminal(run_id)["status"] == "cancelled"
    group_gone(worker, timeout=10)
    assert group_members(worker) == []
