"""Webhooks go to public addresses only, unless the admin allows private ones.

In process on the in-memory backend, with the app's own delivery thread and a receiver on
loopback: a URL whose host is a loopback, private or link-local address in any spelling is
refused when registered; an endpoint that resolves to one when a delivery is due is not
called; with ``webhooks_to_private_addresses`` the same receiver gets the delivery, sent to
the address that was checked.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from control_harness import in_process_app, payload, wait_until
from fastapi.testclient import TestClient

from tunery.db import Run
from tunery.runs import settle
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings

API = "/api/v1"
ROWS = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


class Receiver:
    """A webhook endpoint on loopback that answers 204 and keeps each request's Host."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        hosts = self.hosts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                hosts.append(self.headers["host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def studio(data_dir: Path) -> Iterator[Callable[..., Any]]:
    """``studio(allow_private)``: an app and an admin's headers."""
    with contextlib.ExitStack() as apps:

        def start(allow_private: bool) -> tuple[TestClient, dict[str, str]]:
            settings = Settings.load(data_dir)
            settings.nodes = [NodeSettings(name="n0", tier="cpu")]
            settings.webhooks_to_private_addresses = allow_private
            http, token = apps.enter_context(in_process_app(settings))
            return http, {"Authorization": f"Bearer {token}"}

        yield start


def cancelled_run(http: TestClient, auth: dict[str, str]) -> str:
    """A run that ends (cancelled), which announces itself to every endpoint."""
    dataset = http.post(f"{API}/datasets", files={"file": ("rows.jsonl", ROWS * 4)}, headers=auth)
    run = http.post(f"{API}/runs", json=payload(dataset.json()["id"], "announced"), headers=auth)
    assert run.status_code == 201, run.text
    plane = http.app.state.plane  # type: ignore[attr-defined]
    tick(plane)
    with plane.sessions() as session:
        owner = session.get(Run, run.json()["id"]).account_id
    settle.cancel_run(plane, account_id=owner, run_id=run.json()["id"])
    plane.changed()
    return run.json()["id"]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "10.0.0.5",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "localhost",
        "LOCALHOST.",
        "admin.localhost",
    ],
)
def test_a_private_address_in_any_spelling_is_refused_when_registered(
    studio: Callable[..., Any], host: str
) -> None:
    http, auth = studio(False)
    answer = http.post(f"{API}/webhooks", json={"url": f"http://{host}:8080/hooks"}, headers=auth)
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["detail"]["problems"]
    assert problem["field"] == "url"
    assert "webhooks_to_private_addresses" in problem["message"]
    assert http.get(f"{API}/webhooks", headers=auth).json() == []


def test_a_public_name_or_address_is_accepted(studio: Callable[..., Any]) -> None:
    http, auth = studio(False)
    for url in ("https://hooks.example.com/a", "https://8.8.8.8/hooks"):
        answer = http.post(f"{API}/webhooks", json={"url": url}, headers=auth)
        assert answer.status_code == 201, answer.text


def test_with_private_addresses_allowed_the_delivery_reaches_the_checked_address(
    studio: Callable[..., Any], receiver: Receiver
) -> None:
    http, auth = studio(True)
    url = f"http://localhost:{receiver.port}/hooks"
    assert http.post(f"{API}/webhooks", json={"url": url}, headers=auth).status_code == 201
    cancelled_run(http, auth)
    wait_until(lambda: receiver.hosts, timeout=30, what="the delivery")
    # Sent to the address resolved and checked, under the name the account registered.
    assert receiver.hosts == [f"localhost:{receiver.port}"]
    [delivery] = http.get(f"{API}/webhooks/deliveries", headers=auth).json()
    assert (delivery["status"], delivery["last_status_code"]) == ("delivered", 204)


def test_an_endpoint_that_resolves_to_a_private_address_is_not_called(
    studio: Callable[..., Any], receiver: Receiver
) -> None:
    # Registered while the admin allowed private addresses, delivered after they stopped.
    http, auth = studio(True)
    url = f"http://localhost:{receiver.port}/hooks"
    assert http.post(f"{API}/webhooks", json={"url": url}, headers=auth).status_code == 201
    http.app.state.plane.settings.webhooks_to_private_addresses = False  # type: ignore[attr-defined]
    cancelled_run(http, auth)

    def tried() -> dict[str, Any] | None:
        rows = http.get(f"{API}/webhooks/deliveries", headers=auth).json()
        return rows[0] if rows and rows[0]["attempts"] else None

    delivery = wait_until(tried, timeout=30, what="a delivery attempt")
    assert delivery["status"] == "pending" and delivery["last_status_code"] is None
    assert "resolves to a loopback, private or link-local address" in delivery["last_error"]
    assert receiver.hosts == []
