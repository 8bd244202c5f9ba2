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
from tunery.db import Attempt, Run, new_id, now
from tunery.runs import billing, service, store
from tunery.runs.lifecycle import ACTIVE, RunStatus
from tunery.runs.service import ControlPlane

logger = logging.getLogger(__name__)
OUT_OF_CREDITS = {
    "code": "out_of_credits",
    "message": "the account ran out of credits during training",
    "hint": "ask an admin for credits (tunery accounts grant), then submit the run again",
}
LOST_WORKER = {
    "code": "worker_lost",
    "message": "the worker stopped reporting (process or node lost)",
    "hint": "nothing to do: the run resumes from its newest checkpoint",
}


def reconcile(plane: ControlPlane) -> None:
    with plane.sessions.begin() as session:
        for attempt in session.scalars(select(Attempt).where(Attempt.active.is_(True))):
            attempt.lease_expires_at = now() + plane.settings.lease_seconds


def tick(plane: ControlPlane) -> None:
    plane.backend.collect()
    reap(plane)
    enforce_credits(plane)
    place(plane)


def enforce_credits(plane: ControlPlane) -> None:
    """Stop an account's training runs once their credits so far reach its balance.

    Charges are capped at the balance, so a balance never goes negative, even with several
    runs training at once.
    """
    at = now()
    stopped: list[Handle] = []
    finished = 0
    with plane.sessions.begin() as session:
        training = session.scalars(select(Run).where(Run.status == RunStatus.TRAINING.value))
        by_account: dict[str, list[Run]] = {}
        for run in training:
            tier = plane.settings.tier(run.tier)
            if tier is not None and tier.credits_per_minute > 0:
                by_account.setdefault(run.account_id, []).append(run)
        for account_id, runs in by_account.items():
            accrued = sum(service.live_metrics(plane, session, run)["credits"] for run in runs)
            if accrued < billing.balance(session, account_id):
                continue
            for run in runs:
                attempt = session.scalar(
                    select(Attempt).where(Attempt.run_id == run.id, Attempt.active.is_(True))
                )
                if attempt is not None:
                    attempt.active, attempt.ended_at = False, at
                    attempt.end_reason = "out of credits"
                    if attempt.pid:
                        stopped.append(Handle(attempt.pid, attempt.process_started or ""))
                service.finish(
                    plane,
                    session,
                    run,
                    to=RunStatus.FAILED,
                    phase="done",
                    at=at,
                    error=OUT_OF_CREDITS,
                )
                finished += 1
    for handle in stopped:
        plane.backend.cancel(handle, grace_seconds=plane.settings.cancel_grace_seconds)
    if finished:
        plane.notifier.notify()


def reap(plane: ControlPlane) -> None:
    at = now()
    lost: list[Handle] = []
    reaped = 0
    with plane.sessions.begin() as session:
        for attempt in session.scalars(select(Attempt).where(Attempt.active.is_(True))):
            handle = Handle(attempt.pid, attempt.process_started or "") if attempt.pid else None
            expired = attempt.lease_expires_at < at
            gone = handle is not None and not plane.backend.alive(handle)
            if not (expired or gone):
                continue
            session.refresh(attempt)  # a report may have ended it meanwhile
            if not attempt.active:
                continue
            attempt.active = False
            attempt.ended_at = at
            attempt.end_reason = "lease expired" if expired else "process exited"
            reaped += 1
            if handle is not None and not gone:
                lost.append(handle)
            run = session.get(Run, attempt.run_id)
            if run is not None and RunStatus(run.status) in ACTIVE:
                service.retry_or_fail(plane, session, run, error=LOST_WORKER, transient=True, at=at)
    for handle in lost:
        plane.backend.cancel(handle, grace_seconds=plane.settings.cancel_grace_seconds)
    # Watchers learn of a lost worker now, not at their next keep-alive.
    if reaped:
        plane.notifier.notify()


def place(plane: ControlPlane) -> None:
    at = now()
    with plane.sessions() as session:
        busy = set(session.scalars(select(Attempt.node).where(Attempt.active.is_(True))))
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
        if _start_attempt(plane, run, node.name, node.threads):
            busy.add(node.name)
            running[run.account_id] += 1


def _start_attempt(plane: ControlPlane, run: Run, node: str, threads: int | None) -> bool:
    attempt_id = new_id("att")
    token = new_id("fence")
    with plane.sessions.begin() as session:
        try:
            store.move(
                session,
                run.id,
                expected={RunStatus.QUEUED, RunStatus.RETRYING},
                to=RunStatus.WAITING_FOR_GPU,
                phase="provisioning",
                attempt=run.attempt + 1,
                retry_at=None,
            )
        except store.TransitionConflict:
            return False  # cancelled between the read and now
        session.add(
            Attempt(
                id=attempt_id,
                run_id=run.id,
                number=run.attempt + 1,
                node=node,
                token=token,
                # Loading a model can take a while before the first heartbeat thread starts.
                lease_expires_at=now() + 3 * plane.settings.lease_seconds,
            )
        )
    plane.notifier.notify()
    launch = AttemptLaunch(
        attempt_id=attempt_id,
        token=token,
        server_url=plane.server_url,
        node=node,
        threads=threads,
        log_path=str(plane.runs_dir / run.id / f"attempt-{run.attempt + 1}.log"),
    )
    try:
        handle = plane.backend.start(launch)
    except OSError as error:
        logger.exception("starting a worker on %s failed", node)
        with plane.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            attempt.active, attempt.ended_at, attempt.end_reason = False, now(), "start failed"
            fresh = session.get(Run, run.id)
            service.retry_or_fail(
                plane,
                session,
                fresh,
                at=now(),
                transient=True,
                error={"code": "worker_start_failed", "message": str(error), "hint": ""},
            )
        return False
    with plane.sessions.begin() as session:
        attempt = session.get(Attempt, attempt_id)
        attempt.pid, attempt.process_started = handle.pid, handle.started
        cancelled_meanwhile = not attempt.active
    if cancelled_meanwhile:
        plane.backend.cancel(handle, grace_seconds=plane.settings.cancel_grace_seconds)
        return False
    return True


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
