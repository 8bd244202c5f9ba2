"""The scheduler: one thread that reaps lost attempts and hands queued runs to the backend.

Each ``tick``:

1. *Reap*: an active attempt whose lease expired (no heartbeat for ``lease_seconds``) or
   whose worker the backend reports gone is lost; its worker is stopped and its run moves
   to ``retrying`` (transient) or ``failed`` once the retry budget is spent. Attempts the
   backend still places (a cluster with no free node of the tier) keep a fresh lease and
   record why they wait; placed ones record their node (each change a line of the run's
   log).
2. *Place*: for each tier, while the backend has a slot for it (``claim``: an idle node of
   the local pool, room for one more pending attempt on a cluster), the next run of the
   tier moves to ``waiting_for_gpu`` and its attempt is handed to the backend. Runs wait in
   ``queued`` (and ``retrying`` until their back-off ends) otherwise. The order is
   ``tunery.runs.queue``'s (round robin across accounts, only runs whose first minute
   is paid for), the one users see as queue positions. A retrying run keeps its place:
   while it is next but still backing off, it holds the slot instead of letting a later run
   take it.

``reconcile`` runs at start-up, and at a tick after a gap longer than half the lease (a
paused or starved server): workers outlive both, so every attempt that was active gets a
fresh lease to report in before it is declared lost.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from sqlalchemy import select

from tunery.backends.base import AttemptLaunch, Handle, WorkerState
from tunery.db import Attempt, Run, now
from tunery.lifecycle import ACTIVE, RunStatus
from tunery.phases import Phase
from tunery.runs import billing, queue, retention, store
from tunery.runs.attempts import retry_or_fail
from tunery.runs.plane import ControlPlane
from tunery.runs.queries import attempts_by_run, live_metrics
from tunery.runs.settle import fail_stranded, finish

logger = logging.getLogger(__name__)
OUT_OF_CREDITS = {
    "code": billing.OUT_OF_CREDITS_CODE,
    "message": "the account ran out of credits during training",
    "hint": "ask an admin for credits (tunery accounts grant), then submit the run again",
}
LOST_WORKER = {
    "code": "worker_lost",
    "message": "the worker stopped reporting (process or node lost)",
    "hint": "nothing to do: the run resumes from its newest checkpoint",
}


def reconcile(plane: ControlPlane) -> None:
    """Give every live attempt a fresh lease: workers outlive a control-plane restart."""
    with plane.sessions.begin() as session:
        for attempt in store.active_attempts(session):
            store.renew_lease(attempt, now() + plane.settings.lease_seconds)


def tick(plane: ControlPlane) -> None:
    plane.workers.collect()
    at = now()
    if (
        plane.last_tick_at is not None
        and at - plane.last_tick_at > plane.settings.lease_seconds / 2
    ):
        # The server was paused or starved: workers could not report in meanwhile, so they
        # get a fresh lease, as on start-up, instead of being declared lost.
        reconcile(plane)
    plane.last_tick_at = at
    reap(plane)
    enforce_credits(plane)
    fail_stranded(plane)
    place(plane)
    retention.sweep(plane)


def _stop(plane: ControlPlane, handles: list[Handle]) -> None:
    for handle in handles:
        plane.workers.cancel(handle, grace_seconds=plane.settings.cancel_grace_seconds)


def enforce_credits(plane: ControlPlane) -> None:
    """Stop an account's training runs once their credits so far reach its balance.

    Charges are capped at the balance, so a balance never goes negative, even with several
    runs training at once.
    """
    at = now()
    stopped: list[Handle] = []
    finished = 0
    with plane.sessions.begin() as session:
        training = list(session.scalars(select(Run).where(Run.status == RunStatus.TRAINING.value)))
        attempts = attempts_by_run(session, [run.id for run in training])
        by_account: dict[str, list[Run]] = {}
        for run in training:
            tier = plane.settings.tier(run.tier)
            if tier is not None and tier.credits_per_minute > 0:
                by_account.setdefault(run.account_id, []).append(run)
        for account_id, runs in by_account.items():
            accrued = sum(live_metrics(plane, run, attempts[run.id])["credits"] for run in runs)
            if accrued < billing.balance(session, account_id):
                continue
            for run in runs:
                attempt = store.active_attempt(session, run.id)
                if attempt is not None and store.end_attempt(
                    session, attempt, at, "out of credits"
                ):
                    stopped += [handle] if (handle := store.handle_of(attempt)) else []
                finish(
                    plane,
                    session,
                    run,
                    to=RunStatus.FAILED,
                    phase=Phase.DONE,
                    at=at,
                    error=OUT_OF_CREDITS,
                )
                finished += 1
    _stop(plane, stopped)
    if finished:
        plane.notifier.notify()


def reap(plane: ControlPlane) -> None:
    """End attempts whose lease expired or whose worker is gone; retry or fail their runs.

    Attempts still waiting for placement are not lost: their lease is renewed.
    """
    at = now()
    lost: list[Handle] = []
    changed = 0
    with plane.sessions.begin() as session:
        for attempt in store.active_attempts(session):
            handle = store.handle_of(attempt)
            where = plane.workers.placement(handle) if handle is not None else None
            if where is not None and where.state != WorkerState.GONE:
                changed += store.record_placement(
                    session, attempt, node=where.node, waiting_reason=where.reason
                )
                if where.state == WorkerState.PENDING:
                    # Once placed it still has to start and load, as a fresh attempt does.
                    store.renew_lease(attempt, at + 3 * plane.settings.lease_seconds)
                    continue
            expired = attempt.lease_expires_at < at
            gone = where is not None and where.state == WorkerState.GONE
            if not (expired or gone):
                continue
            reason = "lease expired" if expired else "process exited"
            if not store.end_attempt(session, attempt, at, reason):
                continue  # a report ended it meanwhile
            changed += 1
            if handle is not None and not gone:
                lost.append(handle)
            run = session.get(Run, attempt.run_id)
            if run is not None and RunStatus(run.status) in ACTIVE:
                retry_or_fail(plane, session, run, error=LOST_WORKER, transient=True, at=at)
    _stop(plane, lost)
    # Watchers learn of a lost worker (or where a run landed) now, not at their next poll.
    if changed:
        plane.notifier.notify()


def place(plane: ControlPlane) -> None:
    """Hand the next runs of each tier to the backend while it has slots for them."""
    at = now()
    with plane.sessions() as session:
        busy = store.busy_nodes(session)
        running = Counter(
            session.scalars(select(Run.account_id).where(Run.status.in_([s.value for s in ACTIVE])))
        )
        candidates = list(
            session.scalars(
                select(Run).where(
                    Run.status.in_([RunStatus.QUEUED.value, RunStatus.RETRYING.value])
                )
            )
        )
    for tier in sorted({run.tier for run in candidates}):
        waiting = queue.startable(plane, candidates, tier)
        while waiting:
            node = plane.workers.claim(tier, busy)
            if node is None:
                break
            run = queue.next_run(plane, waiting, running)
            waiting.remove(run)
            if node:
                busy.add(node)
            if run.status == RunStatus.RETRYING.value and (run.retry_at or 0) > at:
                # A retrying run keeps its place: its slot waits out the back-off rather
                # than go to a run submitted after it.
                continue
            if _start_attempt(plane, run, node):
                running[run.account_id] += 1


def _start_attempt(plane: ControlPlane, run: Run, node: str) -> bool:
    """Move ``run`` to ``waiting_for_gpu`` and hand its new attempt to the backend (on
    ``node``, or "" where the backend places it); False if the run was cancelled meanwhile
    or the backend could not take the attempt."""
    number = run.attempt + 1
    with plane.sessions.begin() as session:
        try:
            store.move(
                session,
                run.id,
                expected={RunStatus.QUEUED, RunStatus.RETRYING},
                to=RunStatus.WAITING_FOR_GPU,
                phase=Phase.PROVISIONING,
                attempt=number,
                retry_at=None,
            )
        except store.TransitionConflict:
            return False  # cancelled between the read and now
        # Loading a model can take a while before the first heartbeat thread starts.
        attempt, token = store.open_attempt(
            session,
            run,
            number=number,
            node=node,
            lease_until=now() + 3 * plane.settings.lease_seconds,
        )
    plane.notifier.notify()
    launch = AttemptLaunch(
        attempt_id=attempt.id,
        run_id=run.id,
        number=number,
        tier=run.tier,
        node=node,
        token=token,
        server_url=plane.server_url,
    )
    try:
        handle = plane.workers.start(launch)
    except OSError as error:
        logger.exception("starting a worker for %s failed", run.id)
        _start_failed(plane, attempt.id, run.id, error)
        return False
    with plane.sessions.begin() as session:
        fresh = session.get(Attempt, attempt.id)
        store.record_handle(fresh, handle)
        cancelled_meanwhile = not fresh.active
    if cancelled_meanwhile:
        _stop(plane, [handle])
        return False
    return True


def _start_failed(plane: ControlPlane, attempt_id: str, run_id: str, error: OSError) -> None:
    at = now()
    with plane.sessions.begin() as session:
        attempt = session.get(Attempt, attempt_id)
        if not store.end_attempt(session, attempt, at, "start failed"):
            return  # cancelled meanwhile: the run is settled already
        retry_or_fail(
            plane,
            session,
            session.get(Run, run_id),
            at=at,
            transient=True,
            error={"code": "worker_start_failed", "message": str(error), "hint": ""},
        )
    plane.notifier.notify()


class SchedulerThread:
    """Runs ``tick`` every ``interval`` seconds, sooner when woken by a submit or a report."""

    def __init__(self, plane: ControlPlane, *, interval: float = 1.0) -> None:
        self._plane = plane
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tunery-scheduler", daemon=True)

    def start(self) -> None:
        reconcile(self._plane)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._plane.wake_scheduler.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                tick(self._plane)
            except Exception:
                logger.exception("scheduler tick failed; retrying")
            self._plane.wake_scheduler.wait(self._interval)
            self._plane.wake_scheduler.clear()
