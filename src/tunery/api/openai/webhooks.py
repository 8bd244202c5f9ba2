"""``/api/v1/webhooks``: the account's webhook endpoints and their delivery log.

OpenAI manages endpoints in its dashboard, so they are tunery's own routes (and errors),
used by the studio and ``tunery webhooks``.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from tunery.api.deps import AccountDep, PlaneDep
from tunery.openai_api import webhooks
from tunery.openai_api.webhooks import DeliveryPublic, EndpointPublic

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    secret: str | None = None
    """``whsec_<base64>``; one is generated when omitted."""
    event_types: list[str] | None = None
    """Default: every fine_tuning.job.* event."""


@router.get("", response_model=list[EndpointPublic])
def list_endpoints(plane: PlaneDep, account: AccountDep) -> list[EndpointPublic]:
    return webhooks.list_endpoints(plane, account.id)


@router.post("", status_code=201, response_model=EndpointPublic)
def add_endpoint(plane: PlaneDep, account: AccountDep, body: EndpointCreate) -> EndpointPublic:
    """Register a URL; the answer carries the signing secret, shown this once."""
    return webhooks.add_endpoint(
        plane,
        account_id=account.id,
        url=body.url,
        secret=body.secret,
        event_types=body.event_types,
    )


@router.delete("/{endpoint_id}", status_code=204)
def delete_endpoint(plane: PlaneDep, account: AccountDep, endpoint_id: str) -> None:
    webhooks.delete_endpoint(plane, account_id=account.id, endpoint_id=endpoint_id)


@router.get("/deliveries", response_model=list[DeliveryPublic])
def deliveries(plane: PlaneDep, account: AccountDep) -> list[DeliveryPublic]:
    """The newest 100 deliveries: status, attempts and the endpoint's last answer."""
    return webhooks.list_deliveries(plane, account.id)
