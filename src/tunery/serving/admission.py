"""Fair admission of chat requests: a cap per account, a round-robin queue per model.

An account may have at most ``per_account`` chat requests in flight (waiting or being
answered) across all models; one more is refused at once (``Busy``: 429 with
``Retry-After``). Each model answers one request at a time; the requests waiting for it
are served round robin across accounts, so an account's requests never wait behind more
than one request of each other account. A model's queue holds at most ``per_model``
waiting requests, more than one account may hold (``per_account`` is smaller), so one
account cannot fill it. Everything here runs on the API process's event loop: no locks.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from dataclasses import dataclass


class Busy(Exception):
    """A request refused for now; ``retry_after`` is the time to wait, in whole seconds."""

    def __init__(self, message: str, *, retry_after: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.code = code


class ModelQueue:
    """Turns at one model: one request holds it, the rest wait, served round robin."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = False
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._rotation: deque[str] = deque()

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    async def turn(self, account_id: str, retry_after: int) -> None:
        """Wait for this account's turn; Busy when the queue is full."""
        if not self.busy and not self.waiting:
            self.busy = True
            return
        if self.waiting >= self.capacity:
            raise Busy(
                f"the model has {self.capacity} requests waiting already; try again shortly",
                retry_after=retry_after,
                code="model_queue_full",
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if account_id not in self._waiting:
            self._waiting[account_id] = deque()
            self._rotation.append(account_id)
        self._waiting[account_id].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the turn came as the caller left: pass it on
            else:
                self._forget(account_id, future)
            raise

    def release(self) -> None:
        """The holder is done: the next account in rotation gets its turn."""
        while self._rotation:
            account_id = self._rotation.popleft()
            futures = self._waiting[account_id]
            future = futures.popleft()
            if futures:
                self._rotation.append(account_id)
            else:
                del self._waiting[account_id]
            if not future.done():
                future.set_result(None)
                return
        self.busy = False

    def _forget(self, account_id: str, future: asyncio.Future[None]) -> None:
        futures = self._waiting.get(account_id)
        if futures is None or future not in futures:
            return
        futures.remove(future)
        if not futures:
            del self._waiting[account_id]
            self._rotation.remove(account_id)


@dataclass(frozen=True)
class Ticket:
    """An admitted request: it holds one of its account's slots and its model's turn."""

    account_id: str
    model_key: str
    started: float


class Admission:
    """The per-account cap and the per-model queues; ``service_seconds`` is how long a
    request recently took (a moving average), which ``Retry-After`` is made of."""

    def __init__(self, *, per_account: int, per_model: int) -> None:
        self.per_account = per_account
        self.per_model = per_model
        self._in_flight: Counter[str] = Counter()
        self._queues: dict[str, ModelQueue] = {}
        self.service_seconds = 1.0

    def retry_after(self) -> int:
        return max(1, math.ceil(self.service_seconds))

    def in_flight(self, account_id: str) -> int:
        return self._in_flight[account_id]

    async def admit(self, account_id: str, model_key: str) -> Ticket:
        """Take one of the account's slots, then wait for the model's turn; Busy when the
        account has ``per_account`` requests in flight or the model's queue is full. Every
        ticket is handed back with ``done``."""
        if self._in_flight[account_id] >= self.per_account:
            raise Busy(
                f"this account has {self.per_account} chat requests in flight, the most "
                "the server allows; wait for one to finish",
                retry_after=self.retry_after(),
                code="rate_limit_exceeded",
            )
        self._in_flight[account_id] += 1
        queue = self._queues.setdefault(model_key, ModelQueue(self.per_model))
        try:
            await queue.turn(account_id, self.retry_after())
        except BaseException:
            self._leave(account_id, model_key, queue)
            raise
        return Ticket(account_id, model_key, asyncio.get_running_loop().time())

    def done(self, ticket: Ticket) -> None:
        """The request is answered (or abandoned and its model free again)."""
        took = asyncio.get_running_loop().time() - ticket.started
        self.service_seconds = 0.8 * self.service_seconds + 0.2 * took
        queue = self._queues[ticket.model_key]
        queue.release()
        self._leave(ticket.account_id, ticket.model_key, queue)

    def _leave(self, account_id: str, model_key: str, queue: ModelQueue) -> None:
        self._in_flight[account_id] -= 1
        if not self._in_flight[account_id]:
            del self._in_flight[account_id]
        if not queue.busy and not queue.waiting:
            self._queues.pop(model_key, None)
