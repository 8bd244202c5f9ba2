"""GET /api/v1/events: every run of one account on one stream, resumable, and nothing else.

The studio's page follows this stream; these tests read it with a plain HTTP client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_harness import Client, Server, add_account, payload

Event = tuple[int | None, str, dict[str, Any]]


def read_stream(
    server: Server,
    token: str,
    until: Callable[[list[Event]], bool],
    *,
    last_event_id: str | None = None,
    timeout: float = 120,
) -> list[Event]:
    """Events (id or None, kind, data) from the account stream until ``until`` holds."""
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    with httpx.stream(
        "GET", f"{server.url}/api/v1/events", headers=headers, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        event_id, kind, data = None, "message", []
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                events.append((event_id, kind, json.loads("\n".join(data))))
                event_id, kind, data = None, "message", []
                if until(events):
                    return events
            if time.monotonic() > deadline:
                pytest.fail(f"the stream did not deliver in {timeout:.0f}s: {events[-5:]}")
    pytest.fail(f"the stream ended: {events[-5:]}")


def finished(run_id: str) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return any(
            kind == "status" and data["run_id"] == run_id and data["status"] == "completed"
            for _, kind, data in events
        )

    return check


def test_the_stream_needs_a_token_and_ignores_a_malformed_cursor(shared_server: Server) -> None:
    answer = httpx.get(f"{shared_server.url}/api/v1/events", timeout=10)
    assert answer.status_code == 401
    assert answer.json()["detail"]["message"] == "missing bearer token"
    forged = httpx.get(
        f"{shared_server.url}/api/v1/events",
        headers={"Authorization": "Bearer tny_made-up"},
        timeout=10,
    )
    assert forged.status_code == 401
    for cursor in ("abc", "-5", "", "1e3"):
        first = read_stream(
            shared_server, shared_server.token, lambda events: True, last_event_id=cursor
        )
        # Not a number: the stream starts now and says where, as without a cursor.
        assert first[0][1] == "ready"
        assert first[0][0] == first[0][2]["cursor"]


@pytest.mark.slow
def test_the_stream_carries_every_event_of_its_account_only_and_resumes_without_gaps(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path
) -> None:
    owner = client_for(server)
    outsider_token = add_account(server, "outsider-stream")
    outsider = client_for(server, outsider_token)
    opened = read_stream(server, owner.token, lambda events: True)
    assert opened[0][1] == "ready"
    cursor = opened[0][0]

    mine = owner.submit_ok(payload(owner.dataset(demo_dataset), "mine"))
    theirs = outsider.submit_ok(payload(outsider.dataset(demo_dataset), "theirs"))
    events = read_stream(server, owner.token, finished(mine["id"]), last_event_id=str(cursor))

    stored = [(event_id, kind, data) for event_id, kind, data in events if event_id is not None]
    assert {data["run_id"] for _, _, data in stored} == {mine["id"]}
    ids = [event_id for event_id, _, _ in stored]
    assert ids == sorted(set(ids)) and ids[0] > cursor
    statuses = [data["status"] for _, kind, data in stored if kind == "status"]
    assert statuses == ["queued", "waiting_for_gpu", "training", "completed"]
    assert {kind for _, kind, _ in stored} >= {"status", "phase", "metrics", "log", "samples"}
    # The same events as the run's own history, in order.
    history = owner.events(mine["id"]).events
    assert ids == [event.id for event in history]
    for _, kind, data in events:
        if kind == "snapshot":
            assert {run["id"] for run in data["runs"]} <= {mine["id"]}

    # Resuming from the middle gives exactly the rest: no gap, no duplicate.
    middle = ids[len(ids) // 2]
    rest = read_stream(
        server,
        owner.token,
        lambda got: any(event_id == ids[-1] for event_id, _, _ in got),
        last_event_id=str(middle),
    )
    assert [event_id for event_id, _, _ in rest if event_id is not None] == [
        event_id for event_id in ids if event_id > middle
    ]
    outsider.wait_terminal(theirs["id"])
