"""What a local worker process carries and leaves: its token, the server's environment, and
its scratch folder when it is killed.

Real worker processes (``python -m tunery.worker``) started by the local backend against a
small HTTP endpoint in this process that plays the server: it records the token each worker
presents and answers 404, which a worker reads as "fenced off" and exits.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from control_harness import wait_until

from tunery.backends.base import AttemptLaunch, Handle
from tunery.backends.local import SCRATCH, LocalBackend, group_members, process_of
from tunery.environment import child_environment

SECRETS = {
    "TUNERY_TOKEN": "admin-cli-token-secret",
    "TUNERY_STORAGE__SECRET_ACCESS_KEY": "s3-secret-key",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-key",
    "RAY_AUTH_TOKEN": "ray-cluster-secret",
}
AREA = "local workers: token, environment, scratch"


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """(URL, tokens presented): a stand-in server that fences every attempt off."""
    tokens: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            tokens.append(self.headers.get("X-Attempt-Token", ""))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}", tokens
    http.shutdown()
    http.server_close()


def launch(url: str, attempt: str, token: str) -> AttemptLaunch:
    return AttemptLaunch(
        attempt_id=attempt,
        run_id=f"run_{attempt}",
        number=1,
        tier="cpu",
        node="local-0",
        token=token,
        server_url=url,
    )


def variables(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {name: value for name, _, value in pairs}


def test_a_worker_gets_its_token_on_a_pipe_and_none_of_the_servers_secrets(
    tmp_path: Path, server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    url, presented = server
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    backend = LocalBackend([("local-0", "cpu")], tmp_path)
    handle = backend.start(launch(url, "att_pipe", "fence-secret-value"))
    pid, _ = process_of(handle)
    try:
        environ = variables(pid)
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        wait_until(lambda: presented, timeout=120, what="the worker's first request")
    finally:
        backend.cancel(handle, grace_seconds=1)
    leaked = [name for name, value in SECRETS.items() if value in str(environ)]
    in_sight = b"fence-secret-value" in command or "fence-secret-value" in str(environ)
    got_it = presented[0] == "fence-secret-value"
    figures.attack(AREA, refused=not leaked and not in_sight and got_it)
    assert presented[0] == "fence-secret-value"  # it got the token all the same
    assert not in_sight
    assert leaked == []
    assert environ["TMPDIR"] == str(tmp_path / SCRATCH / "att_pipe")
    assert environ["TUNERY_DATA_DIR"] == str(tmp_path)


def test_killed_workers_leave_no_scratch_behind(tmp_path: Path, figures) -> None:
    """Cancelled (SIGTERM, then SIGKILL), lost (killed from outside, as the OOM killer or a
    crash does), and ended while no server ran: each scratch folder goes. The workers wait
    for a server that never answers, so each lives until it is killed."""
    url = "http://127.0.0.2:9"
    backend = LocalBackend([("local-0", "cpu")], tmp_path)
    scratch = tmp_path / SCRATCH

    def started(attempt: str) -> Handle:
        handle = backend.start(launch(url, attempt, "t"))
        (scratch / attempt / "data-copy.jsonl").write_bytes(b"x" * 1024)  # what it wrote
        return handle

    cancelled = started("att_cancelled")
    backend.cancel(cancelled, grace_seconds=1)
    assert not (scratch / "att_cancelled").exists()

    lost = started("att_lost")
    pid, _ = process_of(lost)
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not group_members(pid), timeout=30, what="the group to die")
    backend.collect()  # the scheduler's every tick
    assert not (scratch / "att_lost").exists()

    # A restarted server finds a live worker's folder in use and a dead one's not.
    alive, orphaned = started("att_alive"), started("att_orphaned")
    pid, _ = process_of(orphaned)
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not group_members(pid), timeout=30, what="the group to die")
    LocalBackend([("local-0", "cpu")], tmp_path)
    assert (scratch / "att_alive").exists() and not (scratch / "att_orphaned").exists()
    backend.cancel(alive, grace_seconds=1)
    left = sorted(path.name for path in scratch.iterdir())
    figures.measure("local workers: scratch folders left after 4 killed workers", len(left))
    figures.attack(AREA, refused=left == [])
    assert left == []


def test_no_process_the_server_starts_inherits_its_secrets(
    monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    """Local workers and chat's model hosts run what tenants chose (their recipes, their
    GGUFs): both start with ``child_environment``, which keeps what the stack reads."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    child = child_environment({"TMPDIR": "/scratch"})
    kept = [name for name in SECRETS if name in child]
    figures.attack(AREA, refused=kept == [])
    assert kept == []
    assert child["PATH"] == os.environ["PATH"] and child["TMPDIR"] == "/scratch"
    assert (child["HF_HUB_OFFLINE"], child["CUDA_VISIBLE_DEVICES"]) == ("1", "0")
