"""The scheduler: one thread that reaps lost attempts and places runs on idle nodes.

Each ``tick``:

1. *Reap*: an active attempt whose lease expired (no heartbeat for ``lease_seconds``) or
   whose worker process is gone is lost; its process group is stopped and its run moves to
   ``retrying`` (transient) or ``failed`` once the retry budget is spent.
2. *Place*: for every idle node, the next run of the node's tier moves to
   ``waiting_for_gpu`` and a worker is started for a new attempt. Runs wait in ``queued``
   (and ``retrying`` until their back-off ends) while no node of their tier is idle. Order is
   fair across accounts: the account with the fewest runs on nodes goes first, then the
   oldest run. A retrying run keeps its place: while it is next but still backing off, its
   node stays idle instead of going to a later run.

``reconcile`` runs once at start-up: workers survive a control-plane crash, so every attempt
that was active gets a fresh lease to report in before it is declared lost.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from sqlalchemy import select

from tunery.backends.base import AttemptLaunch, Handle
from tunery.db import Attempt, Run, now
from tunery.phases import Phase
from tunery.runs import billing, store
from tunery.runs.attempts import retry_or_fail
from tunery.runs.lifecycle import ACTIVE, RunStatus
from tunery.runs.plane import ControlPlane
from tunery.runs.queries import attempts_by_run, live_metrics
from tunery.runs.settle import finish

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
    reap(plane)
    enforce_credits(plane)
    place(plane)


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
    """End attempts whose lease expired or whose worker is gone; retry or fail their runs."""
    at = now()
    lost: list[Handle] = []
    reaped = 0
    with plane.sessions.begin() as session:
        for attempt in store.active_attempts(session):
            handle = store.handle_of(attempt)
            expired = attempt.lease_expires_at < at
            gone = handle is not None and not plane.workers.alive(handle)
            if not (expired or gone):
                continue
            reason = "lease expired" if expired else "process exited"
            if not store.end_attempt(session, attempt, at, reason):
                continue  # a report ended it meanwhile
            reaped += 1
            if handle is not None and not gone:
                lost.append(handle)
            run = session.get(Run, attempt.run_id)
            if run is not None and RunStatus(run.status) in ACTIVE:
                retry_or_fail(plane, session, run, error=LOST_WORKER, transient=True, at=at)
    _stop(plane, lost)
    # Watchers learn of a lost worker now, not at their next keep-alive.
    if reaped:
        plane.notifier.notify()


def place(plane: ControlPlane) -> None:
    """Start the next run of each idle node's tier (fair across accounts, then oldest)."""
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
    for node in plane.settings.nodes:
        if node.name in busy:
            continue
        waiting = [run for run in candidates if run.tier == node.tier]
        if not waiting:
            continue
        run = min(waiting, key=lambda r: (running[r.account_id], r.created_at, r.id))
        candidates.remove(run)
        if run.status == RunStatus.RETRYING.value and (run.retry_at or 0) > at:
            # A retrying run keeps its place: the node waits out its back-off rather than
            # go to a run submitted after it.
            continue
        if _start_attempt(plane, run, node.name):
            busy.add(node.name)
            running[run.account_id] += 1


def _start_attempt(plane: ControlPlane, run: Run, node: str) -> bool:
    """Move ``run`` to ``waiting_for_gpu`` on ``node`` and start its worker; False if the run
    was cancelled meanwhile or the worker could not be started."""
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
        attempt = store.open_attempt(
            session,
            run,
            number=number,
            node=node,
            lease_until=now() + 3 * plane.settings.lease_seconds,
        )
    plane.notifier.notify()
    launch = AttemptLaunch(
        attempt_id=attempt.id,
        token=attempt.token,
        server_url=plane.server_url,
        node=node,
        log_path=str(plane.runs_dir / run.id / f"attempt-{number}.log"),
    )
    try:
        handle = plane.workers.start(launch)
    except OSError as error:
        logger.exception("starting a worker on %s failed", node)
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
