"""Webhooks: accounts register endpoints; a job that ends is announced to each of them.

Deliveries follow Standard Webhooks as OpenAI sends them, so ``client.webhooks.unwrap()``
of the ``openai`` SDK verifies them unchanged: the body is an ``event`` object
(``fine_tuning.job.succeeded|failed|cancelled``, ``data.id`` the job id) and the headers are
``webhook-id`` (the same on every retry), ``webhook-timestamp`` and ``webhook-signature:
v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the endpoint's ``whsec_`` secret.

``Dispatcher`` is one background thread: after every commit (and each second) it records a
delivery per endpoint for each newly terminal run, and posts those due. A delivery that is
not answered 2xx is retried after ``RETRY_DELAYS``, then marked failed. Requests go only to
the URL the account registered, at an address checked to be public
(``openai_api.destinations``): redirects are not followed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery import __version__
from tunery.db import Run, RunEvent, WebhookDelivery, WebhookEndpoint, new_id, now
from tunery.errors import ConfigError
from tunery.openai_api import destinations
from tunery.runs.plane import ControlPlane, NotFound
from tunery.wire.timefmt import iso

logger = logging.getLogger(__name__)
EVENT_TYPES = {
    "completed": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
"""Seconds before each retry; after the last one a delivery is ``failed``."""
REQUEST_SECONDS = 10.0
MAX_ENDPOINTS = 10
MAX_URL_CHARS = 2000
MIN_SECRET_BYTES = 16


class EndpointPublic(BaseModel):
    id: str
    url: str
    event_types: list[str]
    created_at: str
    secret: str | None = None
    """Shown once, when the endpoint is added."""


class DeliveryPublic(BaseModel):
    id: str
    endpoint_id: str
    job_id: str
    event_type: str
    status: str
    """``pending`` (retrying), ``delivered`` or ``failed``."""
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    next_attempt_at: str | None


# Signing -------------------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError for anything else."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret holds at least {MIN_SECRET_BYTES} bytes")
    return key


def signed_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery attempt."""
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
        "user-agent": f"tunery-webhooks/{__version__}",
    }


# Endpoints -----------------------------------------------------------------------------


def _endpoint_view(endpoint: WebhookEndpoint, *, secret: bool = False) -> EndpointPublic:
    return EndpointPublic(
        id=endpoint.id,
        url=endpoint.url,
        event_types=endpoint.event_types,
        created_at=iso(endpoint.created_at),
        secret=endpoint.secret if secret else None,
    )


def check_url(url: str, *, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_CHARS:
        raise ConfigError.single("url", "give an http:// or https:// URL with a host")
    problem = destinations.registration_problem(url, allow_private=allow_private)
    if problem is not None:
        raise ConfigError.single("url", problem)


def add_endpoint(
    plane: ControlPlane,
    *,
    account_id: str,
    url: str,
    secret: str | None = None,
    event_types: list[str] | None = None,
) -> EndpointPublic:
    """Register ``url``; returns it with its secret (generated unless given), shown once."""
    check_url(url, allow_private=plane.settings.webhooks_to_private_addresses)
    secret = secret or new_secret()
    try:
        secret_key(secret)
    except ValueError as error:
        raise ConfigError.single("secret", str(error)) from None
    types = event_types or sorted(EVENT_TYPES.values())
    unknown = [kind for kind in types if kind not in EVENT_TYPES.values()]
    if unknown:
        known = ", ".join(sorted(EVENT_TYPES.values()))
        raise ConfigError.single("event_types", f"unknown {unknown[0]!r}; known: {known}")
    with plane.sessions.begin() as session:
        count = session.scalar(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == account_id)
        )
        if (count or 0) >= MAX_ENDPOINTS:
            raise ConfigError.single("url", f"an account has at most {MAX_ENDPOINTS} endpoints")
        endpoint = WebhookEndpoint(
            id=new_id("whep"),
            account_id=account_id,
            url=url,
            secret=secret,
            event_types=types,
            created_at=now(),
        )
        session.add(endpoint)
    return _endpoint_view(endpoint, secret=True)


def list_endpoints(plane: ControlPlane, account_id: str) -> list[EndpointPublic]:
    with plane.sessions() as session:
        rows = session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == account_id)
            .order_by(WebhookEndpoint.created_at)
        )
        return [_endpoint_view(row) for row in rows]


def delete_endpoint(plane: ControlPlane, *, account_id: str, endpoint_id: str) -> None:
    """Remove the endpoint and its delivery log; nothing more is sent to it."""
    with plane.sessions.begin() as session:
        endpoint = session.scalar(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.account_id == account_id
            )
        )
        if endpoint is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        for delivery in session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        ):
            session.delete(delivery)
        session.flush()
        session.delete(endpoint)


def list_deliveries(plane: ControlPlane, account_id: str, limit: int = 100) -> list[DeliveryPublic]:
    """The account's newest deliveries first."""
    with plane.sessions() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.account_id == account_id)
            .order_by(WebhookDelivery.created_at.desc())
            .limit(limit)
        )
        return [
            DeliveryPublic(
                id=row.id,
                endpoint_id=row.endpoint_id,
                job_id=json.loads(row.payload)["data"]["id"],
                event_type=row.event_type,
                status=row.status,
                attempts=row.attempts,
                last_status_code=row.last_status_code,
                last_error=row.last_error,
                created_at=iso(row.created_at),
                delivered_at=iso(row.delivered_at),
                next_attempt_at=iso(row.next_attempt_at) if row.status == "pending" else None,
            )
            for row in rows
        ]


# Delivery ------------------------------------------------------------------------------


class Dispatcher:
    """The delivery thread: records deliveries for newly ended runs and posts those due."""

    def __init__(self, plane: ControlPlane, *, poll_seconds: float = 1.0) -> None:
        self.plane = plane
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._watermark = 0
        # No kept-alive connections: each request is pinned to the address just checked.
        self._http = httpx.Client(
            timeout=REQUEST_SECONDS,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def start(self) -> None:
        with self.plane.sessions() as session:
            self._watermark = session.scalar(select(func.max(WebhookDelivery.source_event_id))) or 0
        self.plane.notifier.subscribe(self._wake.set)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=REQUEST_SECONDS + 5)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                self.record_new()
                self.deliver_due()
            except Exception:  # the thread must outlive one bad pass; the next one retries
                logger.exception("webhook delivery pass failed")

    def record_new(self) -> None:
        """A pending delivery per subscribed endpoint for each terminal status event past
        the watermark (endpoints see only events after they were registered)."""
        with self.plane.sessions.begin() as session:
            rows = session.execute(
                select(RunEvent, Run.account_id)
                .join(Run, Run.id == RunEvent.run_id)
                .where(RunEvent.id > self._watermark, RunEvent.kind == "status")
                .order_by(RunEvent.id)
            ).all()
            for event, account_id in rows:
                self._watermark = max(self._watermark, event.id)
                kind = EVENT_TYPES.get(event.data.get("status", ""))
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
            message_id = new_id("evt")
            payload = {
                "id": message_id,
                "object": "event",
                "created_at": int(event.created_at),
                "type": kind,
                "data": {"id": event.run_id},
            }
            session.add(
                WebhookDelivery(
                    id=message_id,
                    endpoint_id=endpoint.id,
                    account_id=account_id,
                    source_event_id=event.id,
                    event_type=kind,
                    payload=json.dumps(payload),
                    status="pending",
                    attempts=0,
                    next_attempt_at=now(),
                    created_at=now(),
                )
            )

    def deliver_due(self) -> None:
        with self.plane.sessions() as session:
            due = list(
                session.execute(
                    select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret)
                    .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= now(),
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                ).all()
            )
        for delivery, url, secret in due:
            if self._stop.is_set():
                return
            self._attempt(delivery, url, secret)

    def _attempt(self, delivery: WebhookDelivery, url: str, secret: str) -> None:
        headers = signed_headers(secret, delivery.id, int(time.time()), delivery.payload)
        code: int | None = None
        error: str | None = None
        allow_private = self.plane.settings.webhooks_to_private_addresses
        try:
            target = destinations.pinned(url, allow_private=allow_private)
            response = self._http.post(
                target.url,
                content=delivery.payload.encode(),
                headers={**headers, "Host": target.host_header},
                extensions={"sni_hostname": target.sni_hostname} if target.sni_hostname else {},
            )
            code = response.status_code
            if not 200 <= code < 300:
                error = f"the endpoint answered {code}"
        except destinations.RefusedDestination as refused:
            error = refused.message[:500]
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as failure:
            # Recorded on this delivery alone: one endpoint's odd URL must not stall the
            # deliveries queued behind it for every account.
            error = f"{type(failure).__name__}: {failure}"[:500]
        attempts = delivery.attempts + 1
        with self.plane.sessions.begin() as session:
            row = session.get(WebhookDelivery, delivery.id)
            if row is None:  # the endpoint was deleted meanwhile
                return
            row.attempts, row.last_status_code, row.last_error = attempts, code, error
            if error is None:
                row.status, row.delivered_at = "delivered", now()
            elif attempts > len(RETRY_DELAYS):
                row.status = "failed"
            else:
                row.next_attempt_at = now() + RETRY_DELAYS[attempts - 1]
