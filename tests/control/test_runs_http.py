"""Real runs through the HTTP API: the happy path, the event stream, and the queue."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from control_harness import (
    Client,
    EventRead,
    Server,
    Watcher,
    payload,
    status_events,
    wait_until,
    zombie_child,
)

pytestmark = pytest.mark.slow


class Reconnector(threading.Thread):
    """Reads the stream in short pieces: drops the connection every few events and resumes
    with ``Last-Event-ID``, as a browser does after a network blip."""

    def __init__(self, client: Client, run_id: str, *, every: int = 3) -> None:
        super().__init__(daemon=True)
        self.client, self.run_id, self.every = client, run_id, every
        self.read = EventRead()
        self.connections = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            last: int | None = None
            while not self.read.ended and self.connections < 500:
                self.connections += 1
                count = 0

                def stop(_: object) -> bool:
                    nonlocal count
                    count += 1
                    return count >= self.every

                piece = self.client.events(self.run_id, last_event_id=last, stop=stop)
                self.read.events += piece.events
                self.read.ids += piece.ids
                self.read.ended = piece.ended
                if piece.events:
                    last = piece.events[-1].id
        except BaseException as error:
            self.error = error


def test_happy_path_over_http(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    api = client_for(server)
    models = api.http.get("/models").json()
    assert "tunery/demo-tiny" in {model["id"] for model in models}
    tiers = api.http.get("/tiers").json()
    assert tiers == [
        {
            "id": "cpu",
            "name": "CPU",
            "credits_per_minute": 1.0,
            "gpu_memory_gib": None,
            "gpus": 0,
            "devices": 1,
            "nodes_total": 1,
            "nodes_free": 1,
        }
    ]
    balance_before = api.http.get("/credits").json()["balance"]
    dataset_id = api.dataset(demo_dataset)

    submitted = api.submit_ok(payload(dataset_id, "happy"))
    run_id = submitted["id"]
    assert submitted["status"] in {"queued", "waiting_for_gpu"}
    assert submitted["attempt"] in {0, 1}
    assert submitted["config"]["training"]["max_steps"] == 6
    watcher = Watcher(api, run_id)
    watcher.start()
    reconnector = Reconnector(api, run_id)
    reconnector.start()

    training = api.wait_status(run_id, "training", timeout=240)
    assert training["started_at"] is not None
    assert api.nodes_free() == 0
    run = api.wait_terminal(run_id, timeout=300)
    live = watcher.result()
    reconnector.join(60)
    assert reconnector.error is None and not reconnector.is_alive()

    # The run as the API shows it.
    assert run["status"] == "completed", run
    assert (run["phase"], run["attempt"], run["error"]) == ("done", 1, None)
    created, started, finished = (
        datetime.fromisoformat(run[key]) for key in ("created_at", "started_at", "finished_at")
    )
    assert created <= started <= finished
    metrics = run["metrics"]
    assert (metrics["step"], metrics["total_steps"]) == (6, 6)
    assert metrics["progress"] == 100.0
    assert metrics["eta_seconds"] == 0.0
    assert metrics["loss"] > 0
    assert metrics["credits"] > 0  # a fraction of a minute at 1 credit/min
    assert len(run["samples"]) == 3
    assert all(sample["prompt"] and "response" in sample for sample in run["samples"])
    assert run["artifacts"]["lora"] == "happy-lora.zip"
    assert run["hub_entry_id"]

    # The live stream saw every state in order, then ended.
    assert live.ended
    assert live.retry == 1000
    assert live.statuses == ["queued", "waiting_for_gpu", "training", "completed"]
    phases = [e.data["phase"] for e in live.events if e.kind == "phase"]
    for phase in ("loading_model", "preparing_data", "attaching_lora", "saving", "sampling"):
        assert phase in phases, phases
    steps = [e.data["step"] for e in live.events if e.kind == "metrics"]
    assert steps == [1, 2, 3, 4, 5, 6]
    kinds = {e.kind for e in live.events}
    assert {"status", "phase", "metrics", "log", "samples"} <= kinds
    assert any("saved happy-lora.zip" in e.data.get("message", "") for e in live.events)
    # Ordered, unique ids; ``id:`` lines match the events.
    assert live.ids == [e.id for e in live.events]
    assert live.ids == sorted(set(live.ids))

    # A replay from the start is the same history; the reconnecting reader saw it exactly.
    replay = api.events(run_id)
    assert replay.ended
    assert [e.id for e in replay.events] == live.ids
    assert reconnector.read.ended
    assert reconnector.connections > 3
    assert reconnector.read.ids == live.ids
    assert [e.data for e in reconnector.read.events] == [e.data for e in live.events]
    # Resuming after the last event of a finished run gives nothing and ends.
    tail = api.events(run_id, last_event_id=live.ids[-1])
    assert (tail.events, tail.ended) == ([], True)
    middle = live.ids[len(live.ids) // 2]
    assert [e.id for e in api.events(run_id, last_event_id=middle).events] == [
        i for i in live.ids if i > middle
    ]

    # The JSON history matches the stream.
    assert [m["step"] for m in api.metrics(run_id)] == [1, 2, 3, 4, 5, 6]
    logs = api.logs(run_id)
    for line in (
        "status: queued",
        "status: waiting_for_gpu",
        "status: training",
        "status: completed",
        "phase: loading_model",
        "saved happy-lora.zip",
    ):
        assert line in logs, logs

    # The node is free again; the run was charged for its training time only.
    assert api.nodes_free() == 1
    credits = api.http.get("/credits").json()
    charges = [row for row in credits["ledger"] if row["run_id"] == run_id]
    assert [row["kind"] for row in charges] == ["charge"]
    assert charges[0]["amount"] == pytest.approx(-metrics["credits"], abs=0.02)
    assert credits["balance"] == pytest.approx(balance_before + charges[0]["amount"])

    # The Hub entry holds the LoRA bundle; a signed URL downloads it without a token.
    entry = api.http.get(f"/hub/{run['hub_entry_id']}").json()
    assert entry["run_id"] == run_id
    assert "lora" in entry["artifacts"]
    link = api.http.post(f"/hub/{run['hub_entry_id']}/artifacts/lora/url").json()
    download = httpx.get(link["url"], timeout=30)
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as bundle:
        assert {"adapter_model.safetensors", "adapter_config.json"} <= set(bundle.namelist())

    # Terminal: cancel is refused and changes nothing; delete removes the record only.
    refused = api.cancel(run_id)
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"]["code"] == "conflict"
    assert api.run(run_id)["status"] == "completed"
    assert len(status_events(api.events(run_id).events)) == 4
    assert api.http.delete(f"/runs/{run_id}").status_code == 204
    assert api.http.get(f"/runs/{run_id}").status_code == 404
    assert api.http.get(f"/runs/{run_id}/events").status_code == 404
    assert api.http.get(f"/hub/{run['hub_entry_id']}").status_code == 200


def test_second_run_waits_in_queue_on_one_node(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    api = client_for(server)
    dataset_id = api.dataset(demo_dataset)
    first = api.submit_ok(payload(dataset_id, "first", training={"max_steps": 3}))
    api.wait_status(first["id"], {"waiting_for_gpu", "training"}, timeout=60)

    second = api.submit_ok(payload(dataset_id, "second", training={"max_steps": 3}))
    assert (second["status"], second["queue_position"], second["attempt"]) == ("queued", 1, 0)
    assert api.nodes_free() == 0
    listed = {run["id"]: run for run in api.runs()}
    assert listed[second["id"]]["queue_position"] == 1
    assert listed[first["id"]]["queue_position"] is None

    # While the first run holds the node, the second stays queued at position 1.
    def first_done() -> bool:
        queued = api.run(second["id"])
        if queued["status"] == "queued":
            assert queued["queue_position"] == 1
            assert server.attempts(second["id"]) == []
        return api.run(first["id"])["status"] in {"completed", "failed", "cancelled"}

    wait_until(first_done, timeout=300, interval=0.5, what="the first run to finish")
    assert api.run(first["id"])["status"] == "completed"
    done = api.wait_terminal(second["id"], timeout=300)
    assert done["status"] == "completed", done
    assert done["queue_position"] is None

    first_events = api.events(first["id"]).events
    second_events = api.events(second["id"]).events
    second_statuses = [e.data["status"] for e in status_events(second_events)]
    assert second_statuses == ["queued", "waiting_for_gpu", "training", "completed"]
    # Event ids are global and ordered: the second run was placed after the first ended.
    completed = next(e for e in status_events(first_events) if e.data["status"] == "completed")
    placed = next(e for e in status_events(second_events) if e.data["status"] == "waiting_for_gpu")
    assert placed.id > completed.id
    (attempt,) = server.attempts(second["id"])
    (first_attempt,) = server.attempts(first["id"])
    assert attempt["node"] == first_attempt["node"] == "local-0"
    assert attempt["started_at"] >= first_attempt["ended_at"]
    assert api.nodes_free() == 1


def test_finished_worker_is_reaped(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    """The worker exits after its last report and the server waits for it: a long-lived
    server must not collect one zombie process per finished run."""
    api = client_for(server)
    run = api.submit_ok(payload(api.dataset(demo_dataset), "reaped", training={"max_steps": 1}))
    worker_pid = server.worker_pid(run["id"])
    assert api.wait_terminal(run["id"], timeout=240)["status"] == "completed"
    assert server.process is not None
    proc = Path(f"/proc/{worker_pid}")
    wait_until(
        lambda: not proc.exists() or zombie_child(worker_pid, server.process.pid),
        timeout=30,
        what=f"the worker {worker_pid} to exit",
    )
    time.sleep(3)  # the scheduler ticks every second: time enough to reap
    assert not zombie_child(worker_pid, server.process.pid), "the finished worker is a zombie"
    assert not proc.exists()
