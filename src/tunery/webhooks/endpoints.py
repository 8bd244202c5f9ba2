"""An account's webhook endpoints and their delivery log: add, list, test, delete.

An endpoint is a URL the server checked it may call (``destinations``), its signing secret
and the events it wants; an account has at most ``MAX_ENDPOINTS``.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import WebhookDelivery, WebhookEndpoint, new_id, now
from tunery.errors import ConfigError
from tunery.runs.plane import Conflict, ControlPlane, NotFound
from tunery.webhooks import destinations
from tunery.webhooks.signing import new_secret, secret_key
from tunery.wire.timefmt import iso
from tunery.wire.webhooks import (
    ALL_EVENT_TYPES,
    TEST_EVENT_TYPE,
    DeliveryPublic,
    DeliveryStatus,
    EndpointPublic,
    WebhookEvent,
)

MAX_ENDPOINTS = 10
DELIVERIES_LISTED = 100


def _endpoint_view(endpoint: WebhookEndpoint, *, secret: bool = False) -> EndpointPublic:
    return EndpointPublic(
        id=endpoint.id,
        url=endpoint.url,
        event_types=endpoint.event_types,
        created_at=iso(endpoint.created_at),
        secret=endpoint.secret if secret else None,
    )


def check_url(url: str, *, allow_private: bool) -> None:
    """ConfigError (field ``url``) for a URL the server could never call, or may not."""
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
    known = ALL_EVENT_TYPES
    types = event_types or known
    unknown = [kind for kind in types if kind not in known]
    if unknown:
        raise ConfigError.single(
            "event_types", f"unknown {unknown[0][:100]!r}; known: {', '.join(known)}"
        )
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
            event_types=sorted(set(types)),
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


def _owned_endpoint(session: Session, account_id: str, endpoint_id: str) -> WebhookEndpoint:
    """The account's endpoint; NotFound for unknown ids and other accounts' endpoints."""
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.account_id == account_id
        )
    )
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {endpoint_id[:100]!r}")
    return endpoint


def delete_endpoint(plane: ControlPlane, *, account_id: str, endpoint_id: str) -> None:
    """Remove the endpoint and its delivery log; nothing more is sent to it."""
    with plane.sessions.begin() as session:
        endpoint = _owned_endpoint(session, account_id, endpoint_id)
        for delivery in session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        ):
            session.delete(delivery)
        session.flush()
        session.delete(endpoint)


def send_test_event(plane: ControlPlane, *, account_id: str, endpoint_id: str) -> DeliveryPublic:
    """Queue a signed test event (``TEST_EVENT_TYPE``) to the endpoint, delivered and retried
    like any other and listed with them. Conflict while an earlier test to it is pending."""
    with plane.sessions.begin() as session:
        _owned_endpoint(session, account_id, endpoint_id)  # NotFound first
        pending = session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.event_type == TEST_EVENT_TYPE,
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
        )
        if pending:
            raise Conflict(
                "a test event to this endpoint is still being delivered",
                hint="its delivery log shows how the endpoint answered; try again once it is "
                "delivered or failed",
            )
        at = now()
        event = WebhookEvent(
            id=new_id("evt"),
            created_at=int(at),
            type=TEST_EVENT_TYPE,
            data={"endpoint_id": endpoint_id},
        )
        delivery = WebhookDelivery(
            id=event.id,
            endpoint_id=endpoint_id,
            account_id=account_id,
            source_event_id=None,
            event_type=TEST_EVENT_TYPE,
            payload=event.model_dump_json(),
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=at,
            created_at=at,
        )
        session.add(delivery)
    plane.changed()
    return _delivery_view(delivery)


def _delivery_view(row: WebhookDelivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=row.id,
        endpoint_id=row.endpoint_id,
        job_id=WebhookEvent.model_validate_json(row.payload).data.get("id"),
        event_type=row.event_type,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=iso(row.created_at),
        delivered_at=iso(row.delivered_at),
        next_attempt_at=iso(row.next_attempt_at) if row.status == DeliveryStatus.PENDING else None,
    )


def list_deliveries(plane: ControlPlane, account_id: str) -> list[DeliveryPublic]:
    """The account's newest ``DELIVERIES_LISTED`` deliveries, newest first."""
    with plane.sessions() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.account_id == account_id)
            .order_by(WebhookDelivery.created_at.desc())
            .limit(DELIVERIES_LISTED)
        )
        return [_delivery_view(row) for row in rows]
