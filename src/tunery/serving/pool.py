"""Serving hosts within a memory budget, driven asynchronously from the API process.

``Serving.answer`` is what a chat route awaits: it admits the request fairly
(``admission``), lends it the model's host (``HostPool``: started on demand, stopping the
least recently used idle hosts while the budget would be exceeded, stopped after
``idle_seconds`` unused), sends the request down the host's stdin and yields what the host
writes back, line by line, without a thread. A request abandoned midway (the client went
away) is cancelled in the host, and the host is handed on only once it said ``end``.

What a host costs is its resident memory as it reports it once loaded; before the first
load of a model it is estimated as twice the GGUF's size plus the context's share
(``FIRST_LOAD_OVERHEAD``). A host that dies is forgotten, its request answered 500, and the
next request starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from tunery.environment import child_environment
from tunery.serving.admission import Admission
from tunery.serving.protocol import MAX_LINE_BYTES, GenerationRequest, decode, encode
from tunery.settings import ServingSettings

logger = logging.getLogger(__name__)
CHAT_THREADS = 4
"""Threads chat requests may hold at once, for their database reads only."""
FIRST_LOAD_OVERHEAD = 64 * 2**20
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class ServedModel:
    key: str
    """One host per key (the Hub entry id)."""
    path: Path


class ServingFailed(Exception):
    """The model cannot answer now: not loadable, too large for the budget, or its host
    died (``status`` 500 or 503)."""

    def __init__(self, status: int, message: str, *, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(eq=False)
class HostProcess:
    """One running ``tunery.serving.host`` and what it costs."""

    key: str
    process: asyncio.subprocess.Process
    cost_bytes: int
    busy: bool = False
    last_used: float = 0.0
    broken: bool = False
    """Its pipes failed: it is stopped and replaced, whatever its exit status says yet."""

    @classmethod
    async def start(cls, model: ServedModel, settings: ServingSettings) -> HostProcess:
        command = [
            sys.executable,
            "-m",
            "tunery.serving.host",
            "--model",
            str(model.path),
            "--context",
            str(settings.context_tokens),
        ]
        if settings.threads:
            command += ["--threads", str(settings.threads)]
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=child_environment(),  # it runs a tenant's GGUF: none of the server's secrets
            limit=MAX_LINE_BYTES,
            start_new_session=True,  # the server stops it (stdin closes when the server dies)
        )
        host = cls(key=model.key, process=process, cost_bytes=0)
        try:
            line = await asyncio.wait_for(_read_line(process), settings.load_timeout_seconds)
        except (TimeoutError, ServingFailed):
            await host.stop()
            raise ServingFailed(
                503,
                f"the model did not load within {settings.load_timeout_seconds:g} s",
                code="model_load_failed",
            ) from None
        if line.get("kind") != "ready":
            await host.stop()
            raise ServingFailed(
                500, f"the model could not be loaded: {line.get('message')}", code="server_error"
            )
        host.cost_bytes = int(line["rss_bytes"])
        return host

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self.broken

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(encode(message))
            await self.process.stdin.drain()
        except (ConnectionError, RuntimeError):
            self.broken = True
            raise _stopped() from None

    def cancel(self, request_id: str) -> None:
        """Ask the host to stop generating ``request_id`` at its next token."""
        if self.alive and self.process.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.process.stdin.write(encode({"op": "cancel", "id": request_id}))

    async def message(self) -> dict[str, Any]:
        """The host's next line; ServingFailed when it died."""
        try:
            return await _read_line(self.process)
        except ServingFailed:
            self.broken = True
            raise

    async def stop(self) -> None:
        """Close its stdin (it exits after the generation in progress), kill it after the
        grace."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def _read_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    try:
        line = await process.stdout.readline()
    except (ValueError, asyncio.LimitOverrunError):
        line = b""
    if not line:
        raise _stopped()
    return decode(line)


def _stopped() -> ServingFailed:
    return ServingFailed(
        500, "the model's serving process stopped while answering", code="server_error"
    )


@dataclass
class HostPool:
    """The running hosts, at most one per model, within ``settings.memory_budget_mib``."""

    settings: ServingSettings
    _hosts: dict[str, HostProcess] = field(default_factory=dict)
    _loading: dict[str, asyncio.Task[HostProcess]] = field(default_factory=dict)
    _measured: dict[str, int] = field(default_factory=dict)
    _freed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def budget_bytes(self) -> int:
        return self.settings.memory_budget_mib * 2**20

    def used_bytes(self) -> int:
        loading = sum(self._estimate_key(key) for key in self._loading)
        return sum(host.cost_bytes for host in self._hosts.values()) + loading

    def _estimate_key(self, key: str) -> int:
        return self._measured.get(key, 0)

    def estimate(self, model: ServedModel) -> int:
        if model.key in self._measured:
            return self._measured[model.key]
        return 2 * model.path.stat().st_size + FIRST_LOAD_OVERHEAD

    async def acquire(self, model: ServedModel) -> HostProcess:
        """The model's host, busy for the caller (the model's turn guarantees one caller
        per model); loads it first, waiting for idle hosts to make room."""
        while True:
            host = self._hosts.get(model.key)
            if host is not None and not host.alive:
                self._retire(host)
                host = None
            if host is not None:
                host.busy = True
                return host
            loading = self._loading.get(model.key)
            if loading is None:
                needed = self.estimate(model)
                if needed > self.budget_bytes:
                    raise ServingFailed(
                        503,
                        f"the model needs about {needed / 2**20:.0f} MiB, more than the "
                        f"serving budget of {self.settings.memory_budget_mib} MiB "
                        "(serving.memory_budget_mib)",
                        code="model_too_large",
                    )
                if not self._make_room(needed):
                    self._freed.clear()
                    await self._freed.wait()
                    continue
                self._measured.setdefault(model.key, needed)
                loading = asyncio.create_task(HostProcess.start(model, self.settings))
                self._loading[model.key] = loading
                loading.add_done_callback(partial(self._loaded, model.key))
            # Shielded: a caller that leaves does not abort a load others will use.
            await asyncio.shield(loading)

    def _loaded(self, key: str, task: asyncio.Task[HostProcess]) -> None:
        self._loading.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            self._measured.pop(key, None)
            self._freed.set()
            return
        host = task.result()
        host.last_used = asyncio.get_running_loop().time()
        self._measured[key] = host.cost_bytes
        self._hosts[key] = host

    def _make_room(self, needed: int) -> bool:
        """Stop idle hosts, least recently used first, until ``needed`` fits; False if
        it cannot fit while the busy ones run."""
        while self.used_bytes() + needed > self.budget_bytes:
            idle = [host for host in self._hosts.values() if not host.busy]
            if not idle:
                return False
            oldest = min(idle, key=lambda host: host.last_used)
            self._retire(oldest)
        return True

    def _retire(self, host: HostProcess) -> None:
        del self._hosts[host.key]
        asyncio.get_running_loop().create_task(host.stop())

    def release(self, host: HostProcess) -> None:
        host.busy = False
        host.last_used = asyncio.get_running_loop().time()
        if not host.alive and self._hosts.get(host.key) is host:
            self._retire(host)
        self._freed.set()

    def sweep(self) -> None:
        """Stop the hosts nobody used for ``idle_seconds``."""
        cutoff = asyncio.get_running_loop().time() - self.settings.idle_seconds
        for host in list(self._hosts.values()):
            if not host.busy and host.last_used < cutoff:
                self._retire(host)

    def loaded(self) -> list[str]:
        return sorted(self._hosts)

    async def close(self) -> None:
        for task in list(self._loading.values()):
            with contextlib.suppress(BaseException):
                await task
        hosts, self._hosts = list(self._hosts.values()), {}
        await asyncio.gather(*(host.stop() for host in hosts))


class Serving:
    """What the chat route talks to: fair admission, then the model's host; ``threads``
    bounds the threads chat requests may hold (for database reads), apart from the
    server's pool."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.threads = anyio.CapacityLimiter(CHAT_THREADS)
        self.admission = Admission(
            per_account=settings.max_concurrent_per_account, per_model=settings.queue_per_model
        )
        self.pool = HostPool(settings)
        self._sweeper: asyncio.Task[None] | None = None
        self._handoffs: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the idle sweep (on the running event loop)."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._handoffs):
            with contextlib.suppress(BaseException):
                await task
        await self.pool.close()

    async def _sweep_forever(self) -> None:
        interval = min(30.0, self.settings.idle_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            self.pool.sweep()

    async def answer(
        self, *, account_id: str, model: ServedModel, request: GenerationRequest
    ) -> AsyncIterator[dict[str, Any]]:
        """The host's ``chunk`` / ``result`` / ``error`` messages for ``request``.

        Raises Busy (before anything is yielded) when the account or the model's queue is
        full, ServingFailed when the model cannot be loaded or its host dies.
        """
        ticket = await self.admission.admit(account_id, model.key)
        host: HostProcess | None = None
        request_id = secrets.token_hex(8)
        finished = False
        try:
            host = await self.pool.acquire(model)
            await host.send({"op": "generate", "id": request_id, "request": request})
            while True:
                message = await host.message()
                if message.get("kind") == "end":
                    finished = True
                    return
                yield message
        finally:
            if host is not None and not finished and host.alive:
                # Abandoned midway: the host must finish (or stop) first; a task of its
                # own waits for that, since this generator may be cancelled.
                host.cancel(request_id)
                task = asyncio.get_running_loop().create_task(self._drain(host, ticket))
                self._handoffs.add(task)
                task.add_done_callback(self._handoffs.discard)
            else:
                if host is not None:
                    self.pool.release(host)
                self.admission.done(ticket)

    async def _drain(self, host: HostProcess, ticket: Any) -> None:
        try:
            while (await host.message()).get("kind") != "end":
                pass
        except ServingFailed:
            logger.warning("a serving host stopped while a cancelled request drained")
        finally:
            self.pool.release(host)
            self.admission.done(ticket)
