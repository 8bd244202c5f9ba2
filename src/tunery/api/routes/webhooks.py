"""``/api/v1/webhooks``: the account's webhook endpoints and their delivery log.

OpenAI manages endpoints in its dashboard, so they are tunery's own routes (and errors),
used by the studio and ``tunery webhooks``; what is delivered is OpenAI's event object.
"""

from __future__ import annotations

from fastapi import APIRouter

from tunery.api.deps import AccountDep, PlaneDep
from tunery.webhooks import endpoints
from tunery.wire.webhooks import DeliveryPublic, EndpointCreate, EndpointPublic

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.get("", response_model=list[EndpointPublic])
def list_endpoints(plane: PlaneDep, account: AccountDep) -> list[EndpointPublic]:
    return endpoints.list_endpoints(plane, account.id)


@router.post("", status_code=201, response_model=EndpointPublic)
def add_endpoint(plane: PlaneDep, account: AccountDep, body: EndpointCreate) -> EndpointPublic:
    """Register a URL; the answer carries the signing secret, shown this once."""
    return endpoints.add_endpoint(
        plane,
        account_id=account.id,
        url=body.url,
        secret=body.secret,
        event_types=body.event_types,
    )


@router.delete("/{endpoint_id}", status_code=204)
def delete_endpoint(plane: PlaneDep, account: AccountDep, endpoint_id: str) -> None:
    endpoints.delete_endpoint(plane, account_id=account.id, endpoint_id=endpoint_id)


@router.post("/{endpoint_id}/test", status_code=202, response_model=DeliveryPublic)
def send_test_event(plane: PlaneDep, account: AccountDep, endpoint_id: str) -> DeliveryPublic:
    """Send the endpoint a signed ``tunery.webhook.test`` event (queued now, delivered and
    retried like job events, listed in the deliveries); 409 while an earlier one is pending."""
    return endpoints.send_test_event(plane, account_id=account.id, endpoint_id=endpoint_id)


@router.get("/deliveries", response_model=list[DeliveryPublic])
def deliveries(plane: PlaneDep, account: AccountDep) -> list[DeliveryPublic]:
    """The newest 100 deliveries: status, attempts and the endpoint's last answer."""
    return endpoints.list_deliveries(plane, account.id)
