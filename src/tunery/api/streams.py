"""Event streams: the wake-up signal, shared reads, and the two SSE generators.

Every commit calls ``Broadcast.publish``; each open stream sleeps on it instead of polling.
Streams that follow the same run (or account) and are caught up all ask the same question,
the events after the same id; ``SharedReads`` answers each once per broadcast generation,
encoded once, so fifty watchers of one run cost one query instead of fifty.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Hashable
from functools import partial
from typing import TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from tunery.event_kinds import EventKind
from tunery.lifecycle import TERMINAL
from tunery.runs import history, queries
from tunery.runs.plane import ControlPlane
from tunery.wire.events import ReadyEvent, SnapshotEvent, StoredEvent

Answer = TypeVar("Answer")
KEEPALIVE_SECONDS = 15.0
# The account stream pushes live numbers (duration, credits) of active runs this often.
SNAPSHOT_SECONDS = 3.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CURSOR = re.compile(r"[0-9]{1,19}")
MAX_EVENT_ID = 2**63 - 1


class Broadcast:
    """Lets event streams sleep until something new is committed (no polling per watcher)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self.generation = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self) -> None:
        """Called from any thread after a commit."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.generation += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, seen: int, timeout: float) -> bool:
        """Wait for a publish after generation ``seen``: True when woken, False on timeout.

        A publish that happened after the caller read ``generation`` returns at once, so a
        commit between a stream's read and its wait is never missed.
        """
        if self.generation != seen:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)


class SharedReads:
    """Answers keyed by (generation, question); older generations are dropped.

    A stream passes the generation it saw *before* reading. Any commit after that bumps the
    generation and wakes the stream again, so an answer computed at or after that point is
    never stale for it. Computing under the lock keeps two streams from running the same
    query at once; the queries are short.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._answers: dict[Hashable, object] = {}

    def get(self, generation: int, question: Hashable, compute: Callable[[], Answer]) -> Answer:
        with self._lock:
            if generation > self._generation:
                self._generation, self._answers = generation, {}
            if generation == self._generation and question in self._answers:
                return self._answers[question]  # type: ignore[return-value]
            answer = compute()
            if generation == self._generation:
                self._answers[question] = answer
            return answer


def sse(payload: StoredEvent | ReadyEvent | SnapshotEvent, event_id: int | None = None) -> str:
    """One Server-Sent Event; the payload's ``kind`` names it."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    kind = payload.kind
    return f"{head}event: {kind}\ndata: {payload.model_dump_json(exclude_unset=True)}\n\n"


def cursor(last_event_id: str | None) -> int | None:
    """A ``Last-Event-ID`` header as an event id; None when absent or malformed.

    Only ASCII digits that fit SQLite's integer count: other digits, thousands of them, or
    a value past 2**63 - 1 would fail in ``int`` or in the query. A malformed cursor is
    ignored rather than refused, since a browser's EventSource stops reconnecting on a 4xx.
    """
    if last_event_id and CURSOR.fullmatch(last_event_id) and int(last_event_id) <= MAX_EVENT_ID:
        return int(last_event_id)
    return None


async def run_stream(
    request: Request, plane: ControlPlane, run_id: str, start: int
) -> AsyncIterator[str]:
    """The run's events after ``start``, live, until the run is terminal and all were sent."""

    def read(after: int) -> tuple[list[tuple[int, str]], str | None]:
        with plane.sessions() as session:
            status = queries.run_status(session, run_id)
            batch = [
                (event.id, sse(history.event_payload(event), event.id))
                for event in history.events_after(session, run_id, after)
            ]
            return batch, status

    broadcast: Broadcast = request.app.state.broadcast
    shared: SharedReads = request.app.state.shared_reads
    after = start
    yield "retry: 1000\n\n"
    while True:
        seen = broadcast.generation
        batch, status = await run_in_threadpool(
            shared.get, seen, ("run", run_id, after), partial(read, after)
        )
        for event_id, text in batch:
            after = event_id
            yield text
        if batch:
            continue
        if status is None or status in TERMINAL:
            return
        if await request.is_disconnected():
            return
        if not await broadcast.wait(seen, KEEPALIVE_SECONDS):
            yield ": keep-alive\n\n"


async def account_cursor(plane: ControlPlane, account_id: str) -> int:
    """The account stream's cursor for "now": its newest event id."""

    def latest() -> int:
        with plane.sessions() as session:
            return history.latest_account_event(session, account_id)

    return await run_in_threadpool(latest)


async def account_stream(
    request: Request, plane: ControlPlane, account_id: str, start: int, *, resumed: bool
) -> AsyncIterator[str]:
    """Every run's events of the account after ``start``; without ``resumed`` a ``ready``
    event first carries ``start``. Never ends by itself."""

    def read(after: int) -> list[tuple[int, str, str]]:
        with plane.sessions() as session:
            return [
                (
                    event.id,
                    event.kind,
                    sse(history.event_payload(event, with_run_id=True), event.id),
                )
                for event in history.account_events_after(session, account_id, after)
            ]

    broadcast: Broadcast = request.app.state.broadcast
    shared: SharedReads = request.app.state.shared_reads
    loop = asyncio.get_running_loop()
    after = start
    yield "retry: 1000\n\n"
    if not resumed:
        yield sse(ReadyEvent(cursor=start), start)
    next_snapshot = 0.0
    active = False
    # A status change moves the balance and the free nodes: the next snapshot says so, so a
    # page learns them without asking.
    status_changed = False
    while True:
        seen = broadcast.generation
        batch = await run_in_threadpool(
            shared.get, seen, ("account", account_id, after), partial(read, after)
        )
        for event_id, kind, text in batch:
            after = event_id
            status_changed = status_changed or kind == EventKind.STATUS
            yield text
        if batch:
            continue
        # The live numbers cost a few queries: at most once a period, or after a status
        # change.
        if status_changed or loop.time() >= next_snapshot:
            numbers = await run_in_threadpool(
                partial(queries.snapshot, plane, account_id, with_tiers=status_changed)
            )
            next_snapshot = loop.time() + SNAPSHOT_SECONDS
            active = bool(numbers.runs)
            if active or status_changed:
                yield sse(numbers)
            status_changed = False
        if await request.is_disconnected():
            return
        timeout = max(0.05, next_snapshot - loop.time()) if active else KEEPALIVE_SECONDS
        if not await broadcast.wait(seen, timeout) and not active:
            yield ": keep-alive\n\n"
