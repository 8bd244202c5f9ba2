"""The queue's order, written once: which waiting runs may start, and in what order.

``place`` starts runs in this order and ``queries.queue_standing`` shows it, so the
position a user sees is the order the scheduler follows, and a run without one says why.

- **Fair.** Round robin across accounts: the account with the fewest active runs goes
  first, then the account whose latest start is oldest (one that never started a run
  first), then the oldest run; each run ordered counts as active and as its account's
  latest start for the runs after it. A retrying run keeps its place among them.
- **Paid for.** A run may start only if its account can pay its first minute: the balance,
  less what each of the account's active runs holds (one minute of its tier, or what it
  accrued if more), covers one minute of the run's tier. Runs it cannot pay for stay queued
  without a position, saying why (``Standing.reasons``), while the account's active runs
  hold credits; once none does, they fail with ``out_of_credits`` (``unpayable``) and
  nothing is charged.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import Attempt, Run, now
from tunery.lifecycle import ACTIVE, RunStatus
from tunery.runs import billing
from tunery.runs.plane import ControlPlane

WAITING = (RunStatus.QUEUED.value, RunStatus.RETRYING.value)
# Ledger amounts are rounded to 4 decimals: a balance of exactly one minute pays for it.
ROUNDING = 1e-6


def fair_order(
    runs: Iterable[Run], running: Mapping[str, int], last_start: Mapping[str, float]
) -> list[Run]:
    """``runs`` in the order the scheduler starts them.

    Equal to taking, again and again, the run with the smallest (active runs of its account,
    its account's latest start, created_at, id), then counting it as active and as its
    account's latest start. An account that just started a run goes behind the others
    even on a single node, where nobody has an active run when the next one is picked.
    """
    by_account: dict[str, deque[Run]] = defaultdict(deque)
    for run in sorted(runs, key=lambda r: (r.created_at, r.id)):
        by_account[run.account_id].append(run)
    heap = [
        (
            running.get(account, 0),
            last_start.get(account, 0.0),
            queue[0].created_at,
            queue[0].id,
            account,
        )
        for account, queue in by_account.items()
    ]
    heapq.heapify(heap)
    clock = max([now(), *last_start.values()])
    order: list[Run] = []
    while heap:
        active, _, _, _, account = heapq.heappop(heap)
        queue = by_account[account]
        order.append(queue.popleft())
        clock += 1.0
        if queue:
            heapq.heappush(heap, (active + 1, clock, queue[0].created_at, queue[0].id, account))
    return order


def next_run(plane: ControlPlane, waiting: list[Run], running: Mapping[str, int]) -> Run:
    """The run ``place`` starts next among ``waiting`` (not empty)."""
    with plane.sessions() as session:
        starts = last_starts(session, {run.account_id for run in waiting})
    return fair_order(waiting, running, starts)[0]


def last_starts(session: Session, account_ids: Iterable[str]) -> dict[str, float]:
    """When each account's latest attempt started (accounts that never started one: none)."""
    rows = session.execute(
        select(Run.account_id, func.max(Attempt.started_at))
        .join(Attempt, Attempt.run_id == Run.id)
        .where(Run.account_id.in_(set(account_ids)))
        .group_by(Run.account_id)
    )
    return {account: started for account, started in rows if started is not None}


def active_counts(session: Session) -> Counter[str]:
    """Active runs (holding a node) per account."""
    return Counter(
        session.scalars(select(Run.account_id).where(Run.status.in_([s.value for s in ACTIVE])))
    )


def held_credits(
    plane: ControlPlane, session: Session, account_ids: Iterable[str]
) -> defaultdict[str, float]:
    """Credits each account's active runs hold: one minute of their tier, or what they
    accrued if more."""
    active = list(
        session.scalars(
            select(Run).where(
                Run.account_id.in_(set(account_ids)), Run.status.in_([s.value for s in ACTIVE])
            )
        )
    )
    attempts: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in session.scalars(
        select(Attempt).where(Attempt.run_id.in_([run.id for run in active]))
    ):
        attempts[attempt.run_id].append(attempt)
    held: defaultdict[str, float] = defaultdict(float)
    at = now()
    for run in active:
        price = minute_price(plane, run.tier)
        accrued = billing.credits_for(
            billing.billable_seconds(attempts[run.id], at), price, whole_minutes=False
        )
        held[run.account_id] += max(accrued, price)
    return held


def minute_price(plane: ControlPlane, tier_id: str) -> float:
    tier = plane.settings.tier(tier_id)
    return tier.credits_per_minute if tier else 0.0


def payable(plane: ControlPlane, session: Session, runs: Iterable[Run]) -> list[Run]:
    """The runs whose first minute their account can pay, oldest first per account.

    An account whose headroom (its balance less what its active runs hold) covers n first
    minutes keeps its n oldest priced runs (a free tier's runs are always kept).
    """
    return _first_minutes(plane, session, runs)[0]


def _first_minutes(
    plane: ControlPlane, session: Session, runs: Iterable[Run]
) -> tuple[list[Run], dict[str, str]]:
    """``payable``'s runs, and why each of the others waits (by run id)."""
    runs = sorted(runs, key=lambda r: (r.created_at, r.id))
    accounts = {run.account_id for run in runs}
    balances = {account: billing.balance(session, account) for account in accounts}
    held = held_credits(plane, session, accounts)
    claimed: defaultdict[str, float] = defaultdict(
        float
    )  # first minutes of the account's runs kept before
    kept: list[Run] = []
    reasons: dict[str, str] = {}
    for run in runs:
        account, price = run.account_id, minute_price(plane, run.tier)
        if price <= 0:
            kept.append(run)
        elif balances[account] - held[account] - claimed[account] >= price - ROUNDING:
            claimed[account] += price
            kept.append(run)
        else:
            reasons[run.id] = _credits_reason(
                balances[account], held[account], claimed[account], run.tier, price
            )
    return kept, reasons


def _credits_reason(balance: float, held: float, claimed: float, tier: str, price: float) -> str:
    """Why a run waits for credits: ``balance`` less ``held`` (by the account's active runs)
    and ``claimed`` (by its runs queued before this one) is short of ``price``."""
    taken = []
    if held > 0:
        taken.append(f"what the account's active runs hold ({held:.2f})")
    if claimed > 0:
        taken.append(f"the first minutes of its runs queued before this one ({claimed:.2f})")
    less = f" less {' and '.join(taken)}" if taken else ""
    return (
        f"waiting for credits: the balance ({balance:.2f} credits){less} does not cover a "
        f"minute on {tier} ({price:g} credits/min)"
    )


def startable(plane: ControlPlane, candidates: list[Run], tier: str) -> list[Run]:
    """The waiting runs of ``tier`` that ``place`` may start now (their first minute paid)."""
    with plane.sessions() as session:
        return payable(plane, session, [run for run in candidates if run.tier == tier])


@dataclass(frozen=True)
class Standing:
    """Where the waiting runs of some tiers stand, by run id: the 1-based place of each run
    that may start in its tier's order, and why each run that may not waits."""

    places: dict[str, int]
    reasons: dict[str, str]


def standing(plane: ControlPlane, session: Session, tiers: Iterable[str]) -> Standing:
    """The ``Standing`` of every waiting run of ``tiers``."""
    waiting = list(
        session.scalars(select(Run).where(Run.status.in_(WAITING), Run.tier.in_(set(tiers))))
    )
    running = active_counts(session)
    starts = last_starts(session, {run.account_id for run in waiting})
    places: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for tier in {run.tier for run in waiting}:
        kept, short = _first_minutes(plane, session, [r for r in waiting if r.tier == tier])
        ordered = fair_order(kept, running, starts)
        places.update({run.id: place for place, run in enumerate(ordered, start=1)})
        reasons.update(short)
    return Standing(places=places, reasons=reasons)


def unpayable(plane: ControlPlane, session: Session) -> list[Run]:
    """Waiting runs that can never start as things stand: their account has no active run
    left to free credits, and its balance does not cover their first minute."""
    waiting = list(session.scalars(select(Run).where(Run.status.in_(WAITING))))
    busy = active_counts(session)
    idle_accounts = {run.account_id for run in waiting} - set(busy)
    balances = {account: billing.balance(session, account) for account in idle_accounts}
    return [
        run
        for run in waiting
        if run.account_id in balances
        and balances[run.account_id] < minute_price(plane, run.tier) - ROUNDING
    ]
