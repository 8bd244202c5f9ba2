"""Helpers for reliability tests against a real ``tunery serve``: routes, victims, sockets.

``every_route`` lists the app's routes from ``app.routes`` (so a new route is attacked
without anyone listing it); ``Victim`` is what account A owns on the server (a dataset, a
cancelled run, a Hub entry with a real artifact) for account B to go after; ``raw_request``
speaks HTTP over a bare socket, for clients no library would imitate.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from control_harness import Server, route_contexts

from tunery.api.app import create_app
from tunery.db import HubEntry, new_id, now
from tunery.runs.plane import ControlPlane
from tunery.settings import NodeSettings, Settings

SECRET_NAME = "victim-secret-name"
"""Every name account A gives its things: a response to B that contains it leaked."""


def every_route() -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route the app serves, HEAD aside."""
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), nodes=[NodeSettings(name="n", tier="cpu")])
        app = create_app(settings, server_url="", run_scheduler=False)
        try:
            found = {
                (method, context.path)
                for context in route_contexts(app)
                for method in getattr(context, "methods", None) or ()
                if method != "HEAD"
            }
        finally:
            app.state.plane.close()
    return sorted(found)


@dataclass(frozen=True)
class Victim:
    """Ids account A owns, by the path parameter names that take them."""

    dataset_id: str
    run_id: str
    entry_id: str
    artifact_bytes: bytes

    def fill(self, template: str) -> str:
        """``template`` with each ``{param}`` replaced by A's id of that kind (a run id for
        kinds this suite does not know: every id is opaque, so it must answer 404 too)."""
        values = {
            "dataset_id": self.dataset_id,
            "file_id": self.dataset_id,
            "run_id": self.run_id,
            "job_id": self.run_id,
            "entry_id": self.entry_id,
            "artifact": "lora",
            "model": self.entry_id,
            "attempt_id": self.run_id,
        }
        path = template
        while "{" in path:
            start, end = path.index("{"), path.index("}")
            name = path[start + 1 : end].split(":")[0]
            path = path[:start] + values.get(name, self.run_id) + path[end + 1 :]
        return path


def add_hub_entry(server: Server, account_id: str, run_id: str, tmp: Path) -> tuple[str, bytes]:
    """A Hub entry of ``account_id`` with a real LoRA ZIP in the server's storage."""
    bundle = tmp / f"{SECRET_NAME}-lora.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("adapter_config.json", "{}")
    content = bundle.read_bytes()
    plane = ControlPlane.open(Settings.load(server.root))
    try:
        entry_id = new_id("hub")
        stored = plane.storage.put(entry_id, "lora", bundle)
        with plane.sessions.begin() as session:
            session.add(
                HubEntry(
                    id=entry_id,
                    account_id=account_id,
                    run_id=run_id,
                    name=SECRET_NAME,
                    base_model="tunery/demo-tiny",
                    artifacts={
                        "lora": {
                            "filename": stored.filename,
                            "size": stored.size,
                            "sha256": stored.sha256,
                        }
                    },
                    created_at=now(),
                )
            )
    finally:
        plane.close()
    return entry_id, content


def raw_request(server: Server, head: bytes, *, timeout: float = 10) -> bytes:
    """Send ``head`` (request line and headers) on a fresh connection; the answer's bytes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer, None if there was none (a dropped connection)."""
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def server_rss(server: Server) -> int:
    assert server.process is not None
    return psutil.Process(server.process.pid).memory_info().rss


@contextlib.contextmanager
def peak_rss(server: Server, interval: float = 0.05) -> Iterator[list[int]]:
    """Samples the server's RSS in the background; the list holds the peak when it exits."""
    import threading

    peak = [server_rss(server)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], server_rss(server))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
