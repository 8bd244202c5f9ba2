"""Signed URLs and the credit ledger, without a server."""

from __future__ import annotations

import json
import time

import pytest

from tunery.catalog.models import catalog, find
from tunery.db import Account, make_engine, make_sessions
from tunery.hub import signing
from tunery.runs import billing

SECRET = bytes(range(32))
FIELDS = {"account_id": "acc_1", "entry_id": "hub_1", "artifact": "gguf"}


def signed(**overrides):
    query, _ = signing.sign(SECRET, **FIELDS)
    parts = dict(part.split("=", 1) for part in query.split("&"))
    return {
        **FIELDS,
        "expires": parts["expires"],
        "nonce": parts["nonce"],
        "signature": parts["signature"],
        **overrides,
    }


def test_a_fresh_url_verifies_and_each_is_distinct():
    assert signing.verify(SECRET, **signed())
    assert signing.sign(SECRET, **FIELDS)[0] != signing.sign(SECRET, **FIELDS)[0]


@pytest.mark.parametrize(
    "field, value",
    [
        ("account_id", "acc_2"),
        ("entry_id", "hub_2"),
        ("artifact", "lora"),
        ("signature", "0" * 64),
        ("signature", ""),
        ("nonce", "0" * 16),
    ],
)
def test_tampering_with_any_field_fails(field, value):
    assert not signing.verify(SECRET, **signed(**{field: value}))


def test_a_changed_expiry_fails():
    url = signed()
    assert not signing.verify(SECRET, **{**url, "expires": str(int(url["expires"]) + 60)})
    assert not signing.verify(SECRET, **{**url, "expires": "soon"})


def test_another_secret_fails():
    assert not signing.verify(bytes(32), **signed())


def test_expired_urls_fail_and_lifetimes_are_capped(monkeypatch):
    _query, expires = signing.sign(SECRET, **FIELDS, lifetime=10 * 24 * 3600)
    assert expires <= time.time() + signing.MAX_LIFETIME + 1
    url = signed()
    monkeypatch.setattr(time, "time", lambda: int(url["expires"]) + 1)
    assert not signing.verify(SECRET, **url)


@pytest.fixture
def session(tmp_path):
    sessions = make_sessions(make_engine(tmp_path / "ledger.db"))
    with sessions.begin() as session:
        session.add(Account(id="acc_1", name="a"))
    with sessions() as session:
        yield session


def grant(session, amount: float) -> None:
    billing.record(session, account_id="acc_1", kind="grant", amount=amount)


def settle(
    session,
    run_id: str,
    seconds: float,
    price: float,
    *,
    cancelled: bool = False,
    refund: bool = False,
) -> float:
    return billing.settle(
        session,
        account_id="acc_1",
        run_id=run_id,
        seconds=seconds,
        credits_per_minute=price,
        cancelled=cancelled,
        refund=refund,
    )


def test_balance_is_the_sum_of_the_ledger(session):
    grant(session, 10)
    billing.record(session, account_id="acc_1", kind="charge", amount=-2.5)
    assert billing.balance(session, "acc_1") == 7.5


def test_cancel_bills_whole_minutes_rounded_down(session):
    grant(session, 10)
    assert settle(session, "r", 179, 2, cancelled=True) == 4
    assert billing.balance(session, "acc_1") == 6
    assert settle(session, "r2", 59, 2, cancelled=True) == 0


def test_completed_runs_pay_for_the_exact_training_time(session):
    grant(session, 10)
    assert settle(session, "r", 90, 2) == 3


def test_a_refunded_run_costs_nothing_and_both_movements_are_kept(session):
    grant(session, 10)
    settle(session, "r", 120, 1, refund=True)
    assert billing.balance(session, "acc_1") == 10
    session.flush()
    kinds = [row.kind for row in session.query(billing.LedgerEntry).order_by("id")]
    assert kinds == ["grant", "charge", "refund"]


def test_charges_never_take_the_balance_below_zero(session):
    grant(session, 1)
    assert settle(session, "r", 600, 1) == 1
    assert billing.balance(session, "acc_1") == 0
    assert settle(session, "r2", 600, 1) == 0


def test_catalog_lists_only_tested_families_and_the_demo_model(demo_model_dir):
    built = json.loads((demo_model_dir / "tunery-demo.json").read_text())
    entry = find("tunery/demo-tiny")
    assert entry is not None and entry.verified and entry.gguf
    assert entry.parameters == built["parameters"]
    assert {model.family for model in catalog()} <= {"llama-bpe", "qwen2", "mistral-spm", "smollm"}
