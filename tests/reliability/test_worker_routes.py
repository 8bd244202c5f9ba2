"""Worker routes under attack: bodies sent with a forged attempt token, and batches from a
token holder that would cost the server more than a worker ever needs.

A forged token is answered before a byte of the body is read (the body guard checks the
attempt's token, as it checks bearer tokens on the API); a valid token's batch is bounded
(reports per batch, steps per history, nesting) before it is validated, and every refusal
lists the first problems and a count, never the whole body again.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import Server, in_process_app, payload, prepare_root, running_server
from control_harness import server_env as environment_of
from fastapi.testclient import TestClient
from server_kit import every_route, peak_rss, read_answer, server_rss, status_of

from tunery.api.body_limits import BodyLimits
from tunery.backends.base import AttemptLaunch
from tunery.backends.fake import FakeBackend
from tunery.errors import MAX_PROBLEMS
from tunery.runs import history as history_of
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings
from tunery.wire.reports import (
    MAX_HISTORY_STEPS,
    MAX_REPORTS_PER_BATCH,
    LogData,
    LogReport,
    MetricsReport,
    StepData,
)
from tunery.worker.reporting import HttpReporter

MIB = 2**20
FORGED = "worker routes: forged attempt tokens (404 unread)"
HOLDER = "worker routes: a token holder's oversized batches (422/413, bounded)"
CHAT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Server]:
    root = prepare_root(tmp_path_factory.mktemp("workers") / "data", demo_model_dir)
    with running_server(root, environment_of(root)) as server:
        yield server


def worker_body_routes() -> list[tuple[str, str]]:
    """Every worker route that takes a body, from the app itself."""
    return [
        (method, path)
        for method, path in every_route()
        if path.startswith("/internal/") and method in ("POST", "PUT", "PATCH")
    ]


def test_forged_tokens_are_answered_before_the_body_is_sent(server: Server, figures) -> None:
    """The request announces 4 MiB and sends none of it: a server that waited for the body
    before checking the token would never answer."""
    routes = worker_body_routes()
    assert {path.split("/")[4] for _, path in routes} == {"events", "bundles", "checkpoints"}
    for method, template in routes:
        path = template.replace("{attempt_id}", "att_nope").replace("{kind}", "lora")
        path = path.replace("{step}", "5")
        for token in ("forged", ""):
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"X-Attempt-Token: {token}\r\nContent-Length: {4 * MIB}\r\n\r\n"
            ).encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(head)
                status = status_of(read_answer(sock))
            figures.attack(FORGED, refused=status == 404, crashed=not status)
            assert status == 404, (method, path, token)


def test_a_forged_batch_of_empty_reports_costs_nothing(server: Server, figures) -> None:
    """The probe's attack: a megabyte of ``{}`` reports under a made-up attempt. It was
    parsed and validated item by item (15 s, +760 MB, a 48 MB answer); now it is 404 unread."""
    body = ('{"events": [' + ", ".join(["{}"] * (MIB // 4)) + "]}").encode()
    before = server_rss(server)
    with (
        peak_rss(server) as peak,
        socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock,
    ):
        sock.sendall(
            b"POST /internal/attempts/att_nope/events HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nX-Attempt-Token: anything\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        with contextlib.suppress(OSError):  # answered and closed unread: the point
            sock.sendall(body)
        answer = read_answer(sock)
    grown = (peak[0] - before) / MIB
    figures.attack(FORGED, refused=status_of(answer) == 404)
    figures.measure("forged 1 MiB report batch: server memory growth (MiB)", grown)
    figures.measure("forged 1 MiB report batch: answer size (bytes)", len(answer))
    assert status_of(answer) == 404
    assert len(answer) < 1000
    assert grown < 20, grown


@pytest.fixture
def worker(tmp_path: Path, demo_model_dir: Path) -> Iterator[tuple[TestClient, AttemptLaunch]]:
    """An in-process app on the in-memory backend with one placed attempt: its token is a
    real worker's, known to the test."""
    root = prepare_root(tmp_path / "data", demo_model_dir)
    settings = Settings.load(root)
    settings.nodes = [NodeSettings(name="n0", tier="cpu")]
    with in_process_app(settings) as (http, token):
        auth = {"Authorization": f"Bearer {token}"}
        uploaded = http.post(
            "/api/v1/datasets", files={"file": ("d.jsonl", CHAT * 8)}, headers=auth
        )
        run = http.post("/api/v1/runs", json=payload(uploaded.json()["id"]), headers=auth)
        assert run.status_code == 201, run.text
        plane = http.app.state.plane
        tick(plane)
        backend: FakeBackend = plane.workers  # type: ignore[assignment]
        yield http, backend.launches[-1]


def post_batch(http: TestClient, launch: AttemptLaunch, batch: Any) -> Any:
    return http.post(
        f"/internal/attempts/{launch.attempt_id}/events",
        content=json.dumps(batch),
        headers={"X-Attempt-Token": launch.token, "Content-Type": "application/json"},
    )


def test_a_token_holders_batch_is_bounded_and_its_refusal_too(
    worker: tuple[TestClient, AttemptLaunch], figures
) -> None:
    http, launch = worker
    metrics = {"kind": "metrics", "data": {"step": 1}}
    history = {"kind": "history", "data": {"steps": [{"step": 1}] * (MAX_HISTORY_STEPS + 1)}}
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    cases = {
        "a batch of empty reports": {"events": [{}] * MAX_REPORTS_PER_BATCH},
        "more reports than a batch takes": {"events": [metrics] * (MAX_REPORTS_PER_BATCH + 1)},
        "a history longer than a report takes": {"events": [history]},
        "a step past the largest count": {
            "events": [{"kind": "metrics", "data": {"step": 10**400}}]
        },
        "a batch nested 500 deep": {
            "events": [{"kind": "log", "data": {"message": "x", "x": deep}}]
        },
    }
    for name, batch in cases.items():
        answer = post_batch(http, launch, batch)
        detail = answer.json()["detail"] if answer.status_code == 422 else {}
        bounded = len(detail.get("problems", [])) <= MAX_PROBLEMS and len(answer.content) < 20_000
        figures.attack(HOLDER, refused=answer.status_code == 422 and bounded)
        assert answer.status_code == 422, (name, answer.text[:500])
        assert bounded, (name, len(answer.content))
    detail = post_batch(http, launch, cases["a batch of empty reports"]).json()["detail"]
    assert (len(detail["problems"]), detail["problems_total"]) == (
        MAX_PROBLEMS,
        MAX_REPORTS_PER_BATCH,
    )
    assert "(and 980 more)" in detail["message"]
    over = http.post(
        f"/internal/attempts/{launch.attempt_id}/events",
        content=b" " * (BodyLimits().report_bytes + 1),
        headers={"X-Attempt-Token": launch.token, "Content-Type": "application/json"},
    )
    figures.answer(HOLDER, over, {413})
    assert over.status_code == 413
    assert post_batch(http, launch, {"events": [metrics]}).status_code == 200  # still a worker


def test_the_reporter_sends_a_backlog_in_batches_the_server_takes(
    worker: tuple[TestClient, AttemptLaunch], figures
) -> None:
    """After an outage a worker holds more than one batch may carry, and a resumed run's
    history more than one report may: both go out in pieces, none refused, none lost."""
    http, launch = worker
    reporter = HttpReporter(http, launch.attempt_id, launch.token, heartbeat_seconds=0.5)
    history = [{"step": step, "loss": 1.0} for step in range(1, 2 * MAX_HISTORY_STEPS + 2)]
    reporter.resumed(history)
    last = len(history) + MAX_REPORTS_PER_BATCH + 1
    for step in range(len(history) + 1, last + 1):
        reporter.send(MetricsReport(data=StepData(step=step, loss=0.5)))
    reporter.start()
    delivered = reporter.finish(LogReport(data=LogData(message="done")), deadline_seconds=120)
    with http.app.state.plane.sessions() as session:
        reported = history_of.reported_steps(session, launch.run_id)
    figures.attack(HOLDER, refused=delivered)
    assert delivered and not reporter.fenced
    assert reported == set(range(1, last + 1))
