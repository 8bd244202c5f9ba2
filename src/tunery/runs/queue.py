"""The queue's order, written once: which waiting runs may start, and in what order.

``place`` starts runs in this order and ``queries.queue_positions`` shows it, so the
position a user sees is the order the scheduler follows.

- **Fair.** Round robin across accounts: the account with the fewest active runs goes
  first, then the account whose latest start is oldest (one that never started a run
  first), then the oldest run; each run ordered counts as active and as its account's
  latest start for the runs after it. A retrying run keeps its place among them.
- **Paid for.** A run may start only if its account can pay its first minute: the balance,
  less what each of the account's active runs holds (one minute of its tier, or what it
  accrued if more), covers one minute of the run's tier. Runs it cannot pay for stay queued
  without a position while the account's active runs hold credits; once none does, they
  fail with ``out_of_credits`` (``unpayable``) and nothing is charged.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import Attempt, Run, now
from tunery.runs import billing
from tunery.runs.lifecycle import ACTIVE, RunStatus
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


def headroom(plane: ControlPlane, session: Session, account_ids: Iterable[str]) -> dict[str, float]:
    """Credits each account may still commit: its balance less what its active runs hold."""
    accounts = set(account_ids)
    active = list(
        session.scalars(
            select(Run).where(
                Run.account_id.in_(accounts), Run.status.in_([s.value for s in ACTIVE])
            )
        )
    )
    attempts: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in session.scalars(
        select(Attempt).where(Attempt.run_id.in_([run.id for run in active]))
    ):
        attempts[attempt.run_id].append(attempt)
    held: Counter[str] = Counter()
    at = now()
    for run in active:
        price = minute_price(plane, run.tier)
        accrued = billing.credits_for(
            billing.billable_seconds(attempts[run.id], at), price, whole_minutes=False
        )
        held[run.account_id] += max(accrued, price)
    return {account: billing.balance(session, account) - held[account] for account in accounts}


def minute_price(plane: ControlPlane, tier_id: str) -> float:
    tier = plane.settings.tier(tier_id)
    return tier.credits_per_minute if tier else 0.0


def payable(plane: ControlPlane, session: Session, runs: Iterable[Run]) -> list[Run]:
    """The runs whose first minute their account can pay, oldest first per account.

    An account whose headroom covers n first minutes keeps its n oldest priced runs (a
    free tier's runs are always kept).
    """
    runs = sorted(runs, key=lambda r: (r.created_at, r.id))
    room = headroom(plane, session, {run.account_id for run in runs})
    kept = []
    for run in runs:
        price = minute_price(plane, run.tier)
        if price <= 0:
            kept.append(run)
        elif room[run.account_id] >= price - ROUNDING:
            room[run.account_id] -= price
            kept.append(run)
    return kept


def startable(plane: ControlPlane, candidates: list[Run], tier: str) -> list[Run]:
    """The waiting runs of ``tier`` that ``place`` may start now (their first minute paid)."""
    with plane.sessions() as session:
        return payable(plane, session, [run for run in candidates if run.tier == tier])


def positions(plane: ControlPlane, session: Session, tiers: Iterable[str]) -> dict[str, int]:
    """1-based place of each startable waiting run of ``tiers`` in its tier's order."""
    waiting = list(
        session.scalars(select(Run).where(Run.status.in_(WAITING), Run.tier.in_(set(tiers))))
    )
    running = active_counts(session)
    starts = last_starts(session, {run.account_id for run in waiting})
    places: dict[str, int] = {}
    for tier in {run.tier for run in waiting}:
        ordered = fair_order(
            payable(plane, session, [r for r in waiting if r.tier == tier]), running, starts
        )
        places.update({run.id: place for place, run in enumerate(ordered, start=1)})
    return places


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
