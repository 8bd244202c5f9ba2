"""The worker's reporter: reports to the control plane over HTTP; cancel, finish and pause
back.

Training never waits on the network: each report (``tunery.wire.reports``) is encoded to
JSON in the caller's thread and queued; a background thread sends them in batches (an
empty batch is a heartbeat). Encoding never fails on a value (NaN and infinities become
null), so nothing the pipeline measures can stop the thread. If the control plane is
unreachable (restarting, say) the thread keeps retrying and nothing is lost or reordered. A
404 or 409 means this attempt was fenced off (cancelled, or declared lost and replaced):
the run stops at the next step boundary and nothing more is sent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import httpx

from tunery.phases import Phase
from tunery.pipeline.reporting import EvalMetrics, StepMetrics
from tunery.wire.reports import (
    ATTEMPT_TOKEN_HEADER,
    MAX_HISTORY_STEPS,
    MAX_REPORTS_PER_BATCH,
    MAX_TEXT_CHARS,
    AnyReport,
    EvaluationData,
    EvaluationReport,
    HistoryData,
    HistoryReport,
    LogData,
    LogReport,
    MetricsReport,
    PhaseData,
    PhaseReport,
    StepData,
    encode,
)

logger = logging.getLogger(__name__)
BATCH_SECONDS = 0.05
RETRY_SECONDS = 0.5
BATCH_BYTES = 2**20
"""A request carries at most this much (the server takes four times as much), and at most
half the reports the server takes, so a backlog after an outage goes out in pieces."""
_WAKE = None  # a queue item that is no report: it only wakes the sender


class HttpReporter:
    def __init__(
        self, client: httpx.Client, attempt_id: str, token: str, *, heartbeat_seconds: float
    ) -> None:
        self._client = client
        self._path = f"/internal/attempts/{attempt_id}/events"
        self._headers = {ATTEMPT_TOKEN_HEADER: token}
        self._heartbeat = heartbeat_seconds
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._finish_requested = threading.Event()
        self._pause_requested = threading.Event()
        self._closed = threading.Event()
        self.fenced = False
        # Events taken off the queue but not yet delivered; finish() sends them first.
        self._unsent: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="tunery-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # Reporter protocol -------------------------------------------------------------

    def phase(self, name: str) -> None:
        self.send(PhaseReport(data=PhaseData(phase=Phase(name))))

    def log(self, message: str) -> None:
        self.send(LogReport(data=LogData(message=str(message)[:MAX_TEXT_CHARS])))

    def metrics(self, metrics: StepMetrics) -> None:
        self.send(MetricsReport(data=StepData.model_validate(metrics.as_dict())))

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        self.send(EvaluationReport(data=EvaluationData.model_validate(metrics.as_dict())))

    def resumed(self, history: list[dict[str, Any]]) -> None:
        steps = [StepData.model_validate(step) for step in history]
        for start in range(0, len(steps), MAX_HISTORY_STEPS):
            chunk = steps[start : start + MAX_HISTORY_STEPS]
            self.send(HistoryReport(data=HistoryData(steps=chunk)))

    def send(self, report: AnyReport) -> None:
        """Queue a report; it goes out with the next batch."""
        self._queue.put(encode(report))

    def should_stop(self) -> bool:
        return self._stop_requested.is_set()

    def should_finish(self) -> bool:
        return self._finish_requested.is_set()

    def should_pause(self) -> bool:
        return self._pause_requested.is_set()

    # Delivery ----------------------------------------------------------------------

    def finish(self, report: AnyReport, *, deadline_seconds: float = 600.0) -> bool:
        """Deliver everything queued plus ``report``; False if fenced or out of time."""
        self._closed.set()
        self._queue.put(_WAKE)  # the sender may be asleep on the queue
        self._thread.join()
        batch = [*self._unsent, *self._drain(), encode(report)]
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline and not self.fenced:
            if self._send(batch):
                return True
            time.sleep(1.0)
        return False

    def _drain(self) -> list[str]:
        batch: list[str] = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if event is not _WAKE:
                batch.append(event)

    def _loop(self) -> None:
        pending = self._unsent
        last_sent = 0.0
        while not self._closed.is_set() and not self.fenced:
            if not pending:
                # Sleep until the first event (or the heartbeat is due), then give the
                # training loop a moment to add more, so bursts go out as one batch.
                try:
                    event = self._queue.get(timeout=self._heartbeat)
                except queue.Empty:
                    event = _WAKE
                if event is not _WAKE:
                    pending.append(event)
                    time.sleep(BATCH_SECONDS)
            else:
                time.sleep(RETRY_SECONDS)
            pending.extend(self._drain())
            if not pending and time.monotonic() - last_sent < self._heartbeat:
                continue
            try:
                sent = self._send(pending)
            except Exception:
                # The thread is the run's only voice: whatever went wrong, keep it alive
                # and try again (the lease keeps the run until the server hears from it).
                logger.exception("sending reports failed; retrying")
                sent = False
            if sent:
                pending.clear()
                last_sent = time.monotonic()

    def _send(self, batch: list[str]) -> bool:
        """True once all of ``batch`` is delivered, in pieces the server takes; what went out
        is removed from ``batch``. False to try the rest again later (network or server
        error). An empty batch is one heartbeat."""
        while True:
            size, count = 0, 0
            for event in batch[: MAX_REPORTS_PER_BATCH // 2]:
                if count and size + len(event) > BATCH_BYTES:
                    break
                size, count = size + len(event) + 2, count + 1
            if not self._post(batch[:count]):
                return False
            del batch[:count]
            if not batch:
                return True

    def _post(self, batch: list[str]) -> bool:
        """True once ``batch`` is delivered; False to try again later."""
        body = '{"events": [' + ", ".join(batch) + "]}"
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            response = self._client.post(self._path, content=body, headers=headers)
        except httpx.HTTPError:
            return False
        if response.status_code in (404, 409):
            self.fenced = True
            self._stop_requested.set()
            return False
        if response.status_code >= 400:
            # Kept and sent again: a restarting server answers 5xx for a moment.
            logger.warning(
                "the server refused a report batch (%s): %s",
                response.status_code,
                response.text[:500],
            )
            return False
        try:
            answer = response.json()
        except ValueError:
            return True  # delivered; the answer was unreadable (a proxy's page, say)
        if answer.get("cancel"):
            self._stop_requested.set()
        if answer.get("finish"):
            self._finish_requested.set()
        if answer.get("pause"):
            self._pause_requested.set()
        return True
