"""Deliveries: recorded for every run that ends, pauses or resumes, and sent, each account
on a lane of its own.

``Dispatcher`` runs one thread with an asyncio loop. After every commit (and each second) it
records a pending delivery per subscribed endpoint for each run that ended, paused or
resumed, then hands each account's due deliveries to that account's lane: a task that sends
them one after another. Lanes run side by side (at most ``MAX_IN_FLIGHT`` requests at once,
taken in turn), so an account whose endpoint answers slowly, or never, holds its own lane
and delays no other account's deliveries.

Every attempt has one deadline for all of it (``ATTEMPT_SECONDS``: resolving the host,
connecting, sending and reading the answer's status line), and reads at most
``ANSWER_BYTES`` of a refusal's body for the delivery log; nothing else of the answer is
read. A delivery not answered 2xx is retried after ``RETRY_DELAYS``, then marked failed.
Requests go only to the URL the account registered, at an address checked to be public
(``destinations``): redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import Run, RunEvent, WebhookDelivery, WebhookEndpoint, new_id, now
from tunery.event_kinds import EventKind
from tunery.lifecycle import RunStatus
from tunery.runs.plane import ControlPlane
from tunery.webhooks import destinations
from tunery.webhooks.signing import signed_headers
from tunery.wire.webhooks import EVENT_TYPES, RESUMED, DeliveryStatus, WebhookEvent

logger = logging.getLogger(__name__)
RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
"""Seconds before each retry; after the last one a delivery is ``failed``."""
ATTEMPT_SECONDS = 10.0
"""The whole of one attempt, however the endpoint paces its answer."""
ANSWER_BYTES = 512
"""What is read of a refusal's body, for the delivery log."""
MAX_IN_FLIGHT = 32
"""Requests under way at once, over all accounts (each account has one at a time)."""
DUE_PER_PASS = 1000


def event_type(session: Session, event: RunEvent) -> str | None:
    """The webhook event a status event announces, if any."""
    status = event.data.get("status", "")
    if status != RunStatus.QUEUED:
        # RunStatus is a StrEnum: the stored string finds its member's entry.
        return EVENT_TYPES.get(status)
    # Only a run's first status is queued when it is created; queued again, it resumed.
    earlier = session.scalar(
        select(func.count())
        .select_from(RunEvent)
        .where(
            RunEvent.run_id == event.run_id,
            RunEvent.kind == EventKind.STATUS,
            RunEvent.id < event.id,
        )
    )
    return RESUMED if earlier else None


@dataclass(frozen=True)
class Due:
    """A delivery to attempt now, with what its request needs."""

    id: str
    account_id: str
    url: str
    secret: str
    payload: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None


class Dispatcher:
    """The delivery thread: records deliveries for newly ended runs and sends those due."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        poll_seconds: float = 1.0,
        attempt_seconds: float = ATTEMPT_SECONDS,
    ) -> None:
        self.plane = plane
        self.poll_seconds = poll_seconds
        self.attempt_seconds = attempt_seconds
        self._watermark = 0
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._lanes: dict[str, asyncio.Task[None]] = {}
        # Name lookups block; a pool of their own keeps a slow resolver of one account from
        # holding the threads the database calls use.
        self._resolver = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="webhooks-dns")

    def start(self) -> None:
        with self.plane.sessions() as session:
            self._watermark = session.scalar(select(func.max(WebhookDelivery.source_event_id))) or 0
        self._thread.start()
        self._started.wait()
        self.plane.notifier.subscribe(self.wake)

    def wake(self) -> None:
        """Look for new and due deliveries now (callable from any thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=self.attempt_seconds + 5)
        self._resolver.shutdown(wait=False, cancel_futures=True)

    # The loop ------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._started.set()
        # No kept-alive connections: each request is pinned to the address just checked.
        async with httpx.AsyncClient(
            timeout=self.attempt_seconds,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as http:
            self._http = http
            while not self._stopping.is_set():
                try:
                    await asyncio.to_thread(self.record_new)
                    due = await asyncio.to_thread(self.due, busy=set(self._lanes))
                    self._open_lanes(due)
                except Exception:  # the loop must outlive one bad pass; the next one retries
                    logger.exception("webhook delivery pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                self._wake.clear()
            for lane in self._lanes.values():
                lane.cancel()
            await asyncio.gather(*self._lanes.values(), return_exceptions=True)
        self._loop = None

    def _open_lanes(self, due: list[Due]) -> None:
        by_account: dict[str, list[Due]] = {}
        for item in due:
            by_account.setdefault(item.account_id, []).append(item)
        for account_id, items in by_account.items():
            if account_id in self._lanes:
                continue
            lane = asyncio.create_task(self._lane(items), name=f"webhooks:{account_id}")
            self._lanes[account_id] = lane
            lane.add_done_callback(partial(self._lane_done, account_id))

    def _lane_done(self, account_id: str, _: asyncio.Task[None]) -> None:
        self._lanes.pop(account_id, None)
        self._wake.set()  # the account may have more due than its lane took

    async def _lane(self, items: list[Due]) -> None:
        """One account's due deliveries, one after another."""
        for item in items:
            if self._stopping.is_set():
                return
            async with self._in_flight:
                outcome = await self.attempt(item)
            await asyncio.to_thread(self.record_outcome, item, outcome)

    # Recording -----------------------------------------------------------------------

    def record_new(self) -> None:
        """A pending delivery per subscribed endpoint for each status event that announces
        something (``event_type``) past the watermark (endpoints see only events after they
        were registered)."""
        with self.plane.sessions.begin() as session:
            rows = session.execute(
                select(RunEvent, Run.account_id)
                .join(Run, Run.id == RunEvent.run_id)
                .where(RunEvent.id > self._watermark, RunEvent.kind == EventKind.STATUS)
                .order_by(RunEvent.id)
            ).all()
            for event, account_id in rows:
                self._watermark = max(self._watermark, event.id)
                kind = event_type(session, event)
                if kind is not None:
                    self._record(session, event, account_id, kind)

    def _record(self, session: Session, event: RunEvent, account_id: str, kind: str) -> None:
        endpoints = session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.account_id == account_id,
                WebhookEndpoint.created_at <= event.created_at,
            )
        )
        recorded = set(
            session.scalars(
                select(WebhookDelivery.endpoint_id).where(
                    WebhookDelivery.source_event_id == event.id
                )
            )
        )
        for endpoint in endpoints:
            # Only this thread records deliveries; after a restart the watermark starts at
            # the newest recorded event, so an event is seen again at most once.
            if kind not in endpoint.event_types or endpoint.id in recorded:
                continue
            message = WebhookEvent(
                id=new_id("evt"),
                created_at=int(event.created_at),
                type=kind,
                data={"id": event.run_id},
            )
            session.add(
                WebhookDelivery(
                    id=message.id,
                    endpoint_id=endpoint.id,
                    account_id=account_id,
                    source_event_id=event.id,
                    event_type=kind,
                    payload=message.model_dump_json(),
                    status=DeliveryStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=now(),
                    created_at=now(),
                )
            )

    def due(self, *, busy: set[str]) -> list[Due]:
        """Pending deliveries whose time has come, oldest first, of accounts without a
        lane under way (a lane's account gets its next ones when the lane ends)."""
        with self.plane.sessions() as session:
            rows = session.execute(
                select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(
                    WebhookDelivery.status == DeliveryStatus.PENDING.value,
                    WebhookDelivery.next_attempt_at <= now(),
                    WebhookDelivery.account_id.not_in(busy),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(DUE_PER_PASS)
            ).all()
        return [
            Due(row.id, row.account_id, url, secret, row.payload, row.attempts)
            for row, url, secret in rows
        ]

    def record_outcome(self, item: Due, outcome: Outcome) -> None:
        attempts = item.attempts + 1
        with self.plane.sessions.begin() as session:
            row = session.get(WebhookDelivery, item.id)
            if row is None:  # the endpoint was deleted meanwhile
                return
            row.attempts, row.last_status_code, row.last_error = (
                attempts,
                outcome.status_code,
                outcome.error,
            )
            if outcome.error is None:
                row.status, row.delivered_at = DeliveryStatus.DELIVERED.value, now()
            elif attempts > len(RETRY_DELAYS):
                row.status = DeliveryStatus.FAILED.value
            else:
                row.next_attempt_at = now() + RETRY_DELAYS[attempts - 1]

    # Sending -------------------------------------------------------------------------

    async def attempt(self, item: Due) -> Outcome:
        """One request of ``item``, within ``attempt_seconds`` whatever the endpoint does."""
        headers = signed_headers(item.secret, item.id, int(time.time()), item.payload)
        allow_private = self.plane.settings.webhooks_to_private_addresses
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.attempt_seconds):
                target = await loop.run_in_executor(
                    self._resolver,
                    partial(destinations.pinned, item.url, allow_private=allow_private),
                )
                async with self._http.stream(
                    "POST",
                    target.url,
                    content=item.payload.encode(),
                    headers={**headers, "Host": target.host_header},
                    extensions={"sni_hostname": target.sni_hostname} if target.sni_hostname else {},
                ) as response:
                    code = response.status_code
                    if 200 <= code < 300:
                        return Outcome(code, None)
                    answer = await _first_bytes(response, ANSWER_BYTES)
        except TimeoutError:
            return Outcome(None, f"no answer within {self.attempt_seconds:g} s")
        except destinations.RefusedDestination as refused:
            return Outcome(None, refused.message[:500])
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as failure:
            # Recorded on this delivery alone: one endpoint's odd URL must not stall the
            # deliveries queued behind it.
            return Outcome(None, f"{type(failure).__name__}: {failure}"[:500])
        said = answer.decode("utf-8", "replace").strip()
        return Outcome(code, f"the endpoint answered {code}" + (f": {said}" if said else ""))


async def _first_bytes(response: httpx.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; the rest is never read."""
    taken = b""
    async for chunk in response.aiter_raw():
        taken += chunk
        if len(taken) >= limit:
            break
    return taken[:limit]
