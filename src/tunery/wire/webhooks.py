"""Webhooks on the wire: the event a receiver gets, and the REST views of endpoints and
deliveries (``/api/v1/webhooks``).

The event is OpenAI's fine-tuning event object, so receivers written for OpenAI work
unchanged: ``{"id", "object": "event", "created_at", "type", "data": {"id": JOB_ID}}``,
``type`` one of ``EVENT_TYPES``' values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunery.lifecycle import RunStatus

EVENT_TYPES: dict[RunStatus, str] = {
    RunStatus.COMPLETED: "fine_tuning.job.succeeded",
    RunStatus.FAILED: "fine_tuning.job.failed",
    RunStatus.CANCELLED: "fine_tuning.job.cancelled",
    RunStatus.PAUSED: "fine_tuning.job.paused",
}
"""The event each status announces; a run ``queued`` again (resumed) announces ``RESUMED``."""
RESUMED = "fine_tuning.job.resumed"
ALL_EVENT_TYPES = sorted({*EVENT_TYPES.values(), RESUMED})
"""The run events an endpoint may subscribe to."""
TEST_EVENT_TYPE = "tunery.webhook.test"
"""A test event an account sends to one of its endpoints on request
(``POST /api/v1/webhooks/{id}/test``); its ``data`` is ``{"endpoint_id": ID}``."""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    """Not yet answered 2xx; retried after each back-off."""
    DELIVERED = "delivered"
    FAILED = "failed"
    """Every retry was spent."""


class WebhookEvent(BaseModel):
    """The body of every delivery (the same on each retry)."""

    id: str
    """The message id, also sent as ``webhook-id``."""
    object: Literal["event"] = "event"
    created_at: int
    type: str
    data: dict[str, str]
    """``{"id": JOB_ID}``: the run that ended (a test event: ``{"endpoint_id": ID}``)."""


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    """Checked by the server (``webhooks.destinations``), every problem named."""
    secret: str | None = None
    """``whsec_<base64>``; one is generated when omitted."""
    event_types: list[str] | None = Field(None, max_length=len(ALL_EVENT_TYPES))
    """Default: every fine_tuning.job.* event."""


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
    job_id: str | None
    """The job (run) announced; None for a test event."""
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    next_attempt_at: str | None
