"""Test harness for the control plane: a real ``tunery serve``, a client, an SSE reader.

``Server`` runs ``python -m tunery.cli serve`` on a data dir and a port, can SIGKILL and
restart it, and reads the SQLite database directly (an attempt's stored handle names its
local worker's pid and start time).
``Client`` calls the HTTP API as one account; ``Client.events`` reads Server-Sent Events
and records every ``id:`` line, so tests can check resumption without gaps or duplicates.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from plane_studio import Studio

from tunery.backends.base import Handle
from tunery.backends.fake import FakeBackend
from tunery.backends.local import group_members, process_of, process_start_time

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from tunery.settings import Settings

TERMINAL = {"completed", "failed", "cancelled"}
STARTUP_SECONDS = 60.0


def route_contexts(app: Any) -> list[Any]:
    """Every route of ``app`` as it is served (routers included under their prefixes): each
    has ``path``, ``methods``, ``dependant``, ``openapi_extra`` and ``endpoint``."""
    found = []
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        found.extend(contexts() if contexts else [route])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        time.sleep(interval)


# The server -------------------------------------------------------------------------


@dataclass
class Server:
    """One ``tunery serve`` process on ``root``; can be killed and started again."""

    root: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_dir: Path | None = None
    """Where the server's output goes; default: the data dir (which must then exist)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.root / "admin-token").read_text().strip()

    @property
    def database(self) -> Path:
        return self.root / "tunery.db"

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir or self.root).joinpath(f"server-{self.starts}.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tunery.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tunery serve exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"tunery serve did not answer /healthz in {STARTUP_SECONDS:.0f}s")

    def kill(self) -> None:
        """SIGKILL the server (workers live in their own sessions and survive)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        logs = sorted((self.log_dir or self.root).glob("server-*.log"))
        return "\n".join(path.read_text(errors="replace") for path in logs)

    # The database, read directly -----------------------------------------------------

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        connection = sqlite3.connect(self.database, timeout=30)
        try:
            connection.row_factory = sqlite3.Row
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        """The run's attempt rows, oldest first, plus ``pid`` and ``started`` of the local
        worker their handle names (None before it was started)."""
        rows = self.query("SELECT * FROM attempts WHERE run_id = ? ORDER BY number", run_id)
        return [_with_process(row) for row in rows]

    def worker_pids(self) -> list[int]:
        """Pids of every worker this server ever started."""
        rows = self.query("SELECT * FROM attempts WHERE process_started IS NOT NULL")
        return [pid for row in rows if (pid := _with_process(row)["pid"]) is not None]

    def worker_pid(self, run_id: str, *, timeout: float = 60) -> int:
        """The pid of the run's active attempt, once the scheduler recorded it."""

        def pid() -> int | None:
            live = [a for a in self.attempts(run_id) if a["active"] and a["pid"] is not None]
            return live[0]["pid"] if live else None

        return wait_until(pid, timeout=timeout, what=f"a worker pid for {run_id}")

    def kill_workers(self) -> None:
        """SIGKILL every worker process group this server ever started (teardown)."""
        if not self.database.exists():
            return
        for pid in self.worker_pids():
            members = [m for m in group_members(pid) if _is_worker(m)]
            if members:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def _with_process(row: sqlite3.Row) -> dict[str, Any]:
    attempt = dict(row)
    attempt["pid"] = attempt["started"] = None
    handle = Handle.decode(row["process_started"]) if row["process_started"] else None
    if handle is not None and handle.backend == "local":
        attempt["pid"], attempt["started"] = process_of(handle)
    return attempt


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"tunery.worker" in cmdline


def take_over_attempt(server: Server, run_id: str) -> tuple[str, str]:
    """(attempt id, token) to speak as the run's live attempt: its worker is stopped
    (SIGSTOP: alive, holding its slot, silent) and the attempt given a token this test
    knows. A worker's own token reaches it on a pipe and is stored hashed, so no one can
    read it back; the test, which owns the data dir, writes the hash of a new one."""
    import secrets

    from tunery.runs.store import token_digest

    pid = server.worker_pid(run_id)
    os.killpg(pid, signal.SIGSTOP)
    token = secrets.token_urlsafe(24)
    [row] = server.query("SELECT id FROM attempts WHERE run_id = ? AND active = 1", run_id)
    connection = sqlite3.connect(server.database, timeout=30)
    try:
        with connection:
            connection.execute(
                "UPDATE attempts SET token_hash = ? WHERE id = ?", (token_digest(token), row[0])
            )
    finally:
        connection.close()
    return row[0], token


def worker_alive(pid: int, started: str | None) -> bool:
    return started is not None and process_start_time(pid) == started


def zombie_child(pid: int, parent: int) -> bool:
    """Whether ``pid`` exited but its parent ``parent`` never waited for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] == "Z" and int(fields[1]) == parent


def write_settings(root: Path, **overrides: Any) -> None:
    settings = {
        "tiers": [{"id": "cpu", "name": "CPU", "credits_per_minute": 1.0}],
        "nodes": [{"name": "local-0", "tier": "cpu"}],
        # Workers that are killed are noticed by their exit, not the lease; a long lease keeps
        # a busy shared machine from declaring a slow but healthy worker lost.
        "lease_seconds": 15,
        "retry_backoff_seconds": 1,
        "cancel_grace_seconds": 2,
        # The estimate's benchmark of each model shape is a busy minute of CPU: the tests
        # that check it turn it on.
        "calibrate_estimates": False,
        **overrides,
    }
    (root / "tunery.yaml").write_text(yaml.safe_dump(settings))


def prepare_root(root: Path, demo_model_dir: Path, **settings: Any) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "demo-tiny").symlink_to(demo_model_dir, target_is_directory=True)
    write_settings(root, **settings)
    return root


def server_env(root: Path | None) -> dict[str, str]:
    # W&B only where a test sets it up: a developer's own key must not reach a test server.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNERY_", "WANDB_"))}
    if root is not None:
        env["TUNERY_DATA_DIR"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def running_server(
    root: Path, env: dict[str, str], *, log_dir: Path | None = None
) -> Iterator[Server]:
    server = Server(root=root, port=free_port(), env=env, log_dir=log_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.kill_workers()


# The client -------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]


@dataclass
class EventRead:
    """What one SSE connection delivered: events in order and every ``id:`` line seen."""

    events: list[Event] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    ended: bool = False  # the server closed the stream (the run is terminal)
    retry: int | None = None

    @property
    def statuses(self) -> list[str]:
        return [e.data["status"] for e in self.events if e.kind == "status"]


class Client:
    """A thin httpx client for the API, authenticated as one account."""

    def __init__(self, server: Server, token: str | None = None) -> None:
        self.server = server
        self.token = token if token is not None else server.token
        self.http = httpx.Client(
            base_url=f"{server.url}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def close(self) -> None:
        self.http.close()

    # Calls --------------------------------------------------------------------------

    def upload(self, path: Path, *, name: str | None = None) -> httpx.Response:
        with path.open("rb") as file:
            data = {"name": name} if name else None
            return self.http.post("/datasets", files={"file": (path.name, file)}, data=data)

    def upload_bytes(self, filename: str, content: bytes) -> httpx.Response:
        return self.http.post("/datasets", files={"file": (filename, content)})

    def dataset(self, path: Path) -> str:
        response = self.upload(path)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def submit(self, payload: dict[str, Any], *, key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return self.http.post("/runs", json=payload, headers=headers)

    def submit_ok(self, payload: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
        response = self.submit(payload, key=key)
        assert response.status_code == 201, response.text
        return response.json()

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def runs(self) -> list[dict[str, Any]]:
        response = self.http.get("/runs")
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, run_id: str) -> httpx.Response:
        return self.http.post(f"/runs/{run_id}/cancel")

    def cancel_ok(self, run_id: str) -> dict[str, Any]:
        """Cancel for cleanup: 200, or 409 for a run that already finished on its own."""
        response = self.cancel(run_id)
        if response.status_code == 409:
            run = self.run(run_id)
            assert run["status"] in {"completed", "failed"}, (response.text, run)
            return run
        assert response.status_code == 200, response.text
        return response.json()

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/runs/{run_id}/metrics")
        assert response.status_code == 200, response.text
        return response.json()

    def logs(self, run_id: str) -> str:
        response = self.http.get(f"/runs/{run_id}/logs")
        assert response.status_code == 200, response.text
        return response.text

    def nodes_free(self, tier: str = "cpu") -> int:
        response = self.http.get("/tiers")
        assert response.status_code == 200, response.text
        return next(row["nodes_free"] for row in response.json() if row["id"] == tier)

    # Waiting ------------------------------------------------------------------------

    def wait_status(
        self, run_id: str, statuses: str | set[str], *, timeout: float = 180, interval=0.1
    ) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else statuses
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal last
            last = self.run(run_id)
            if last["status"] in wanted:
                return last
            if last["status"] in TERMINAL:
                pytest.fail(f"run {run_id} ended {last['status']} waiting for {wanted}: {last}")
            return None

        return wait_until(
            check, timeout=timeout, interval=interval, what=f"{run_id} to be {wanted}"
        )

    def wait_step(self, run_id: str, step: int, *, timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            run = self.run(run_id)
            if run["status"] in TERMINAL:
                pytest.fail(f"run {run_id} ended {run['status']} before step {step}: {run}")
            return run if run["status"] == "training" and run["metrics"]["step"] >= step else None

        return wait_until(check, timeout=timeout, interval=0.1, what=f"{run_id} at step {step}")

    def wait_terminal(self, run_id: str, *, timeout: float = 300) -> dict[str, Any]:
        return wait_until(
            lambda: (run := self.run(run_id))["status"] in TERMINAL and run,
            timeout=timeout,
            interval=0.25,
            what=f"{run_id} to finish",
        )

    # Server-Sent Events -------------------------------------------------------------

    def events(
        self,
        run_id: str,
        *,
        last_event_id: int | None = None,
        stop: Callable[[Event], bool] | None = None,
        timeout: float = 300,
        into: EventRead | None = None,
    ) -> EventRead:
        """Read the run's event stream until the server ends it (or ``stop`` says so).

        ``Last-Event-ID`` is sent when given. Connection errors end the read quietly (the
        caller sees ``ended`` False), which is how a server kill looks to a watcher.
        """
        read = into if into is not None else EventRead()
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        try:
            with self.http.stream(
                "GET",
                f"/runs/{run_id}/events",
                headers=headers,
                timeout=httpx.Timeout(30, read=40),
            ) as response:
                assert response.status_code == 200, response.read().decode()
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if time.monotonic() > deadline:
                        pytest.fail(f"the event stream of {run_id} ran past {timeout:.0f}s")
                    if line.startswith(":"):
                        continue
                    if line:
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                        if name == "id":
                            read.ids.append(int(fields["id"]))
                        continue
                    if "retry" in fields:
                        read.retry = int(fields["retry"])
                    if "data" in fields:
                        data = json.loads(fields["data"])
                        event = Event(int(fields["id"]), fields.get("event", "message"), data)
                        assert data["id"] == event.id and data["kind"] == event.kind, fields
                        read.events.append(event)
                        if stop is not None and stop(event):
                            return read
                    fields = {}
                read.ended = True
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass
        return read


class Watcher(threading.Thread):
    """Reads a run's event stream in the background, live, from the first event."""

    def __init__(self, client: Client, run_id: str, *, timeout: float = 400) -> None:
        super().__init__(daemon=True)
        self.client, self.run_id, self.timeout = client, run_id, timeout
        self.read = EventRead()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.client.events(self.run_id, timeout=self.timeout, into=self.read)
        except BaseException as error:  # surfaced by result()
            self.error = error

    def result(self, timeout: float = 60) -> EventRead:
        self.join(timeout)
        assert not self.is_alive(), "the event stream did not end after the run finished"
        if self.error is not None:
            raise self.error
        return self.read


def add_account(server: Server, name: str, *, credits: float = 100.0) -> str:
    """A second account on the server's database, granted ``credits``; returns its token."""
    from tunery.runs.accounts import create_account, grant_credits
    from tunery.runs.plane import ControlPlane
    from tunery.settings import Settings

    plane = ControlPlane.open(Settings.load(server.root))
    try:
        account_id, token = create_account(plane, name=name)
        if credits:
            grant_credits(plane, account_id=account_id, amount=credits, note="")
        return token
    finally:
        plane.close()


def payload(dataset_id: str, name: str = "ctl-run", **overrides: Any) -> dict[str, Any]:
    """A valid submission on the demo model that trains for a few seconds on CPU."""
    body: dict[str, Any] = {
        "name": name,
        "base_model": "tunery/demo-tiny",
        "dataset_ids": [dataset_id],
        "training": {
            "max_steps": 6,
            "learning_rate": 2e-3,
            "batch_size": 4,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": 2,
            "warmup_ratio": 0.0,
        },
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "gpu_tier": "cpu",
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 8},
        "attestations": {"dataset_rights": True, "model_license": True},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


def group_gone(pid: int, *, timeout: float = 10) -> None:
    """Wait until no process of the worker's process group is left."""
    wait_until(lambda: not group_members(pid), timeout=timeout, what=f"process group {pid} to exit")


def status_events(events: list[Event]) -> list[Event]:
    return [event for event in events if event.kind == "status"]


def assert_one_terminal(events: list[Event], expected: str) -> None:
    """Exactly one terminal status event, it is ``expected``, and it is the last status."""
    statuses = [event.data["status"] for event in status_events(events)]
    terminal = [status for status in statuses if status in TERMINAL]
    assert terminal == [expected], statuses
    assert statuses[-1] == expected, statuses


@contextlib.contextmanager
def in_process_app(settings: Settings) -> Iterator[tuple[TestClient, str]]:
    """The app for ``settings`` in this process, on the in-memory backend with the scheduler
    off (tests call ``tick``), and the admin's token."""
    from fastapi.testclient import TestClient

    from tunery.api.app import create_app
    from tunery.server import ensure_admin

    token = ensure_admin(settings) or (settings.data_dir / "admin-token").read_text().strip()
    app = create_app(
        settings,
        server_url="http://test",
        backend=FakeBackend.for_settings(settings),
        run_scheduler=False,
    )
    with TestClient(app) as http:
        yield http, token


def in_process_cli(
    http: TestClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """``run(*args)``: a ``tunery`` command whose client talks to ``http`` in process."""
    from click.testing import CliRunner

    from tunery.cli.client import Client as CliClient
    from tunery.cli.main import cli as tunery

    def relay(request: httpx.Request) -> httpx.Response:
        answer = http.request(
            request.method, str(request.url), content=request.read(), headers=request.headers
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def in_process(**_: Any) -> CliClient:
        return CliClient("http://testserver", token, transport=httpx.MockTransport(relay))

    monkeypatch.setattr(CliClient, "from_env", staticmethod(in_process))

    def run(*args: str) -> Any:
        result = CliRunner().invoke(tunery, list(args))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return run


def add_account_in(studio: Studio, name: str = "other", *, credits: float = 100.0) -> Studio:
    """A second account of the in-process app, granted ``credits``, as a Studio of its own."""
    from tunery.runs.accounts import create_account, grant_credits

    account_id, token = create_account(studio.plane, name=name)
    grant_credits(studio.plane, account_id=account_id, amount=credits, note="")
    return Studio(studio.http, studio.plane, token)
