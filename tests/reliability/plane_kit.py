"""Helpers for reliability tests that drive a control plane in-process (``make_plane``)."""

from __future__ import annotations

import io
import json

from tunery.runs import billing
from tunery.runs.datasets import store_dataset
from tunery.runs.plane import ControlPlane

CHAT_LINE = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}
)


def grant(plane: ControlPlane, account: str, amount: float) -> None:
    with plane.sessions.begin() as session:
        billing.record(session, account_id=account, kind="grant", amount=amount)


def upload(plane: ControlPlane, account: str, rows: int = 8) -> str:
    """A small valid chat dataset of ``account``; returns its id."""
    source = io.BytesIO(("\n".join([CHAT_LINE] * rows) + "\n").encode())
    return store_dataset(plane, account_id=account, source=source, original_name="d.jsonl").id
