"""Webhook endpoints that fight back, against a real ``tunery serve``: one that answers with a
400 MB body, ones that drip their answer a byte every few seconds, and another account's
endpoint that must not wait behind them.

The endpoints run in this process on loopback (the server is configured with
``webhooks_to_private_addresses``); each ended run announces itself to its account's
endpoints. What is asserted cannot be noise: the order in which things happened, bytes, and
the server's memory; how long the other account waited is a figure in the report.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from control_harness import (
    Client,
    Server,
    add_account,
    payload,
    prepare_root,
    running_server,
    server_env,
    wait_until,
)
from server_kit import peak_rss, server_rss

MIB = 2**20
HUGE_BYTES = 400 * 10**6
DRIP_SECONDS = 5.0


@dataclass
class Endpoints:
    """What the endpoints saw: arrivals by path, drips open, bytes pushed."""

    port: int = 0
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    dripping: set[int] = field(default_factory=set)
    huge_bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def endpoints() -> Iterator[Endpoints]:
    seen = Endpoints()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(60)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    head += chunk
            path = head.split(b" ", 2)[1].decode()
            with seen.lock:
                seen.arrivals.setdefault(path, []).append(time.monotonic())
            with contextlib.suppress(OSError):
                if path.startswith("/drip"):
                    self.drip(sock)
                elif path == "/huge":
                    self.huge(sock)
                else:
                    sock.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

        def drip(self, sock: socket.socket) -> None:
            """The status line, a byte every DRIP_SECONDS, until the server hangs up."""
            with seen.lock:
                seen.dripping.add(id(sock))
            try:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(DRIP_SECONDS)
            finally:
                with seen.lock:
                    seen.dripping.discard(id(sock))

        def huge(self, sock: socket.socket) -> None:
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE_BYTES}\r\n\r\n".encode())
            block = b"x" * MIB
            while seen.huge_bytes_sent < HUGE_BYTES:
                sock.sendall(block)  # OSError once the server hangs up
                seen.huge_bytes_sent += len(block)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    seen.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield seen
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Server]:
    root = prepare_root(
        tmp_path_factory.mktemp("webhooks") / "data",
        demo_model_dir,
        webhooks_to_private_addresses=True,
    )
    with running_server(root, server_env(root)) as server:
        yield server


def account(server: Server, name: str) -> Client:
    return Client(server, add_account(server, name, credits=100))


def end_a_run(client: Client) -> None:
    """A run of the account that ends (cancelled): its endpoints hear of it."""
    dataset = client.dataset(Path("examples/demo-dataset.jsonl"))
    run = client.submit_ok(payload(dataset, name="announced"))
    client.cancel_ok(run["id"])


def add_endpoint(client: Client, url: str) -> None:
    answer = client.http.post("/webhooks", json={"url": url})
    assert answer.status_code == 201, answer.text


def deliveries(client: Client) -> list[dict[str, Any]]:
    answer = client.http.get("/webhooks/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_slow_account_does_not_delay_another_accounts_delivery(
    server: Server, endpoints: Endpoints, figures
) -> None:
    """Account A's three endpoints drip their answers (its lane is busy for their three
    deadlines); account B's delivery arrives while A's are still dripping."""
    slow, other = account(server, "slow"), account(server, "other")
    try:
        for n in range(3):
            add_endpoint(slow, endpoints.url(f"/drip-{n}"))
        add_endpoint(other, endpoints.url("/other"))
        end_a_run(slow)
        wait_until(lambda: endpoints.dripping, timeout=60, what="A's first delivery")
        ended = time.monotonic()
        end_a_run(other)
        wait_until(lambda: endpoints.arrivals.get("/other"), timeout=120, what="B's delivery")
        still_dripping = bool(endpoints.dripping)
        waited = endpoints.arrivals["/other"][0] - ended
        figures.measure("webhooks: another account's delivery while one drips (s)", waited)
        figures.attack("webhooks: slow and huge answers", refused=still_dripping)
        assert still_dripping, "B's delivery waited for A's slow endpoints"
        # A's attempts end at their deadline, each recorded as such.
        wait_until(
            lambda: sum(d["attempts"] for d in deliveries(slow)) >= 3,
            timeout=120,
            what="A's attempts to end",
        )
        cut = [d["last_error"] for d in deliveries(slow) if d["attempts"]]
        figures.attack(
            "webhooks: slow and huge answers", refused=all("no answer within" in e for e in cut)
        )
        assert all("no answer within 10 s" in error for error in cut), cut
        [delivered] = deliveries(other)
        assert (delivered["status"], delivered["last_status_code"]) == ("delivered", 204)
    finally:
        slow.close()
        other.close()


def test_a_huge_answer_is_not_read(server: Server, endpoints: Endpoints, figures) -> None:
    """An endpoint that answers 2xx with a 400 MB body: the server reads the status line
    and hangs up; its memory does not follow the body."""
    hostile = account(server, "huge")
    try:
        add_endpoint(hostile, endpoints.url("/huge"))
        before = server_rss(server)
        with peak_rss(server) as peak:
            end_a_run(hostile)
            wait_until(
                lambda: [d for d in deliveries(hostile) if d["attempts"]],
                timeout=120,
                what="the delivery",
            )
        grown = (peak[0] - before) / MIB
        [delivery] = deliveries(hostile)
        figures.measure("webhooks: server memory growth, 400 MB answer (MiB)", grown)
        figures.measure(
            "webhooks: bytes a 400 MB answer got out before the hang-up (MiB)",
            endpoints.huge_bytes_sent / MIB,
        )
        unread = endpoints.huge_bytes_sent < HUGE_BYTES / 4
        figures.attack("webhooks: slow and huge answers", refused=grown < 50 and unread)
        assert delivery["status"] == "delivered"
        assert grown < 50, grown
        assert unread, endpoints.huge_bytes_sent
    finally:
        hostile.close()
