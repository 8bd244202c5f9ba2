"""Control plane: overhead to a run's first step, and live events fan-out.

Both measurements run against a real ``tunery serve`` (``python -m tunery.cli serve``) on a
fresh data dir whose ``tunery.yaml`` has two local CPU nodes, with the demo model symlinked
at ``DATA/models/demo-tiny`` and ``examples/demo-dataset.jsonl`` uploaded once.

1. **Overhead to first step.** Each round submits a run (3 steps, no gradient
   checkpointing, no GGUF export, 4-token samples), opens the run's SSE stream as soon as
   the POST returns (the stream replays history, so nothing is missed) and takes
   t(first ``metrics`` event received) - t(POST sent). The baseline, interleaved with the
   rounds, is the same setup done alone in a fresh ``python -c``: import torch and
   transformers, load the demo model and tokenizer, ``prepare_data``, attach LoRA, run one
   optimizer step of tunery's ``train()`` with the same config; it is timed from just
   before the process is started to the end of that step. The difference is what the
   control plane adds: scheduling, the worker's spawn and spec fetch, the reporter's
   batching and event delivery. The run is then cancelled and its worker waited for.
   The server's own timestamps of the replayed events (queued, waiting_for_gpu, the
   worker's phases, the metrics event's commit) say where the time went.

2. **Live events fan-out.** Each round submits a run, waits until the scheduler started
   its worker, then SIGSTOPs the worker's process group and drives the attempt from a
   "fake worker" process (``--driver``) that talks the real worker protocol: batches of
   ``metrics`` events POSTed to ``/internal/attempts/{id}/events`` with a fencing token the
   bench gives the attempt (its hash written to ``attempts`` in ``DATA/tunery.db``: the
   worker's own token reached it on a pipe and is stored hashed), one request after the
   other on one connection, as fast as the server answers, for ``--seconds``; every POST
   is also the attempt's heartbeat. Each event carries a sequence number and its send
   time. Meanwhile K watchers follow the run:

   - push: K SSE connections to ``GET /api/v1/runs/{id}/events``;
   - poll (baseline): K loops each fetching ``GET /api/v1/runs/{id}/metrics`` every
     0.5 s (what a UI without a push stream does; the endpoint returns every metrics event
     of the run, so a response grows with the run).

   Reported: ingest (events acknowledged per second), delivered (events received over all
   watchers per second, K x ingest when nothing lags), p50/p95 latency from an event's
   send time to a watcher receiving it, the server's CPU per ingested event and the
   busiest thread count. Push and poll rounds alternate for each K. The driver ends each
   round with a ``result`` event (the run completes); then the stopped worker is killed.

   Why SIGSTOP and not kill: the scheduler's reaper declares an attempt lost as soon as its
   worker process is gone (``LocalBackend.alive``), fences it and starts a new attempt, so
   a killed worker's attempt cannot be driven. A stopped worker is alive and silent.

Watchers and pollers run in this process (one asyncio loop, raw HTTP/1.1 for SSE, httpx for
polls), the driver in another, the server in a third: on 2 cores they all compete, so the
report prints each process's CPU use next to the rates.

Usage: ``python bench/control_plane.py [--rounds 5] [--watchers 1,10,50] [--seconds 8]
[--batch 10] [--threads 1] [--quick] [--json PATH] [--model-dir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "demo-dataset.jsonl"
CACHE = REPO / "bench" / ".cache"
HOST = "127.0.0.1"
TERMINAL = {"completed", "failed", "cancelled"}
POLL_SECONDS = 0.5
STARTUP_SECONDS = 60.0
FIRST_STEP_TIMEOUT = 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The baseline of measurement 1: tunery's pipeline setup and one step, alone in a fresh
# interpreter (argv: model dir, dataset, torch threads). Mirrors run_recipe's order.
BASELINE_CODE = """
import time
t_start = time.time()
import json, sys, tempfile
from pathlib import Path
import torch
import transformers
from tunery.errors import RunCancelled
from tunery.pipeline.config import LoraSettings, TrainingConfig
from tunery.pipeline.data import prepare_data
from tunery.pipeline.load import (
    choose_device, choose_precision, load_model, load_tokenizer, max_context,
)
from tunery.pipeline.lora import attach_lora
from tunery.pipeline.train import train
from tunery.pipeline.train_setup import TrainSetup

model_dir, dataset, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
t_imported = time.time()
config = TrainingConfig(max_steps=3, gradient_checkpointing=False)
tokenizer, chat_format, _ = load_tokenizer(model_dir)
device = choose_device()
precision = choose_precision(config.mixed_precision, device)
model = load_model(model_dir, precision, device)
t_loaded = time.time()
context = max_context(model)
data = prepare_data(
    [dataset], tokenizer, chat_format, max_length=min(config.max_seq_length or context, context),
    seed=config.seed, train_on_inputs=config.train_on_inputs, custom_prompts=[],
)
t_data = time.time()
torch.manual_seed(config.seed)
peft_model, _ = attach_lora(model, LoraSettings(), gradient_checkpointing=False)
t_lora = time.time()


class FirstStep:
    step_end = None

    def phase(self, name): pass

    def log(self, message): pass

    def metrics(self, metrics):
        self.step_end = time.time()

    def resumed(self, history): pass

    def eval_metrics(self, metrics): pass

    def should_stop(self):
        return self.step_end is not None

    def should_finish(self):
        return False

    def should_pause(self):
        return False


reporter = FirstStep()
with tempfile.TemporaryDirectory() as checkpoints:
    setup = TrainSetup(
        model=peft_model, examples=data.examples, config=config, precision=precision,
        device=device, pad_id=tokenizer.pad_token_id, checkpoint_dir=Path(checkpoints),
        fingerprint="bench",
    )
    try:
        train(setup, reporter)
    except RunCancelled:
        pass
print(json.dumps({
    "start": t_start, "imported": t_imported, "loaded": t_loaded, "data": t_data,
    "lora": t_lora, "step_end": reporter.step_end,
}))
"""


# --- small helpers ------------------------------------------------------------------------


def take_over_token(database: Path, attempt_id: str) -> str:
    """A token to speak as ``attempt_id``, whose worker was stopped: the worker's own token
    reached it on a pipe and only its hash is stored, so the bench (which owns the data dir)
    stores the hash of a new one."""
    import secrets

    from tunery.runs.store import token_digest

    token = secrets.token_urlsafe(24)
    connection = sqlite3.connect(database, timeout=30)
    try:
        with connection:
            connection.execute(
                "UPDATE attempts SET token_hash = ? WHERE id = ?", (token_digest(token), attempt_id)
            )
    finally:
        connection.close()
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def process_started_at(ticks: str) -> float:
    """Wall-clock time of a process start given in clock ticks after boot (/proc stat 22)."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + int(ticks) / CLOCK_TICKS


def zombie_children(pid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            count += fields[0] == "Z" and int(fields[1]) == pid
    return count


def number_after(body: bytes, key: bytes, start: int = 0) -> tuple[float, int]:
    """The JSON number after ``key`` (``b'"name":'``) at or after ``start``, and its end."""
    begin = body.index(key, start) + len(key)
    end = begin
    while body[end] not in b",}]":
        end += 1
    return float(body[begin:end]), end


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def demo_model(explicit: Path | None) -> Path:
    """``--model-dir``, or the demo model built once into bench/.cache, keyed by the demo
    builder's source (shared by every benchmark)."""
    from tunery.catalog.demo import builder_fingerprint, cached_demo_model

    if explicit is not None:
        return explicit.resolve()
    if not (CACHE / f"demo-tiny-{builder_fingerprint()}").is_dir():
        print("building the demo model into bench/.cache (once)", file=sys.stderr)
    return cached_demo_model(CACHE)


def run_payload(dataset_id: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "base_model": "tunery/demo-tiny",
        "dataset_ids": [dataset_id],
        "training": {"max_steps": 3, "gradient_checkpointing": False},
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 4},
        "attestations": {"dataset_rights": True, "model_license": True},
    }


# --- the fake worker (--driver), a process of its own -------------------------------------


def step_data(seq: int) -> dict[str, Any]:
    """A worker's step metrics (the fields of StepMetrics.as_dict) plus seq and send time."""
    return {
        "step": seq,
        "total_steps": 1_000_000,
        "epoch": round(seq / 1000, 4),
        "epochs": 1,
        "loss": 2.0 + 1.0 / seq,
        "learning_rate": 2e-4,
        "grad_norm": 0.75,
        "tokens_per_second": 1234.5,
        "trained_tokens": 1000 * seq,
        "training_seconds": 0.1 * seq,
        "eta_seconds": 100.0,
        "progress": round(seq / 10_000, 2),
        "seq": seq,
        "sent_at": time.time(),
    }


def drive(url: str, attempt: str, token: str, seconds: float, batch: int) -> dict:
    """POST batches of metrics events back to back for ``seconds``, then a ``result``.

    Prints ``ready`` once connected and starts when a line arrives on stdin.
    """
    import httpx

    path = f"/internal/attempts/{attempt}/events"
    headers = {"X-Attempt-Token": token}
    client = httpx.Client(base_url=url, timeout=60)
    client.get("/healthz")  # connect before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_start = time.process_time()
    seq = acked = 0
    post_seconds: list[float] = []
    error = None
    first = time.time()
    end = first + seconds
    while time.time() < end:
        events = []
        for _ in range(batch):
            seq += 1
            events.append({"kind": "metrics", "data": step_data(seq)})
        started = time.perf_counter()
        response = client.post(path, json={"events": events}, headers=headers)
        post_seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            error = f"{response.status_code}: {response.text[:200]}"
            break
        acked = seq
    last = time.time()
    cpu = time.process_time() - cpu_start
    result = {"status": "completed", "error": None, "metrics": {}, "samples": []}
    response = client.post(
        path, json={"events": [{"kind": "result", "data": result}]}, headers=headers
    )
    finished = response.status_code == 200
    client.close()
    return {
        "acked": acked,
        "posts": len(post_seconds),
        "first": first,
        "last": last,
        "post_p50": percentile(post_seconds, 0.5),
        "post_p95": percentile(post_seconds, 0.95),
        "cpu_seconds": cpu,
        "error": error,
        "finished": finished,
    }


# --- the server -------------------------------------------------------------------------


@dataclass
class Server:
    root: Path
    port: int
    threads: int
    process: subprocess.Popen[bytes] | None = None
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        # Only --data-dir names the data dir: workers learn it from their spec.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
        env.update(PYTHONUNBUFFERED="1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def prepare(self, model_dir: Path) -> None:
        (self.root / "models").mkdir(parents=True)
        (self.root / "models" / "demo-tiny").symlink_to(model_dir, target_is_directory=True)
        node = {"tier": "cpu", "threads": self.threads}
        settings = {
            "tiers": [{"id": "cpu", "name": "CPU", "credits_per_minute": 1.0}],
            "nodes": [{"name": "local-0", **node}, {"name": "local-1", **node}],
            # Billing stays on (its per-tick and per-event work is part of the control
            # plane); the grant is large so that no number of rounds runs out of credits.
            "admin_grant": 1_000_000,
        }
        (self.root / "tunery.yaml").write_text(json.dumps(settings))  # JSON is YAML

    async def start(self) -> None:
        import httpx

        with (self.root / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tunery.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tunery serve exited:\n{self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        self.token = (self.root / "admin-token").read_text().strip()
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"tunery serve did not answer in {STARTUP_SECONDS:.0f}s:\n{self.log()}")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        connection = sqlite3.connect(self.root / "tunery.db", timeout=30)
        try:
            connection.row_factory = sqlite3.Row
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def kill_workers(self) -> None:
        """SIGKILL every worker process group this server started (stopped ones too)."""
        from tunery.backends.local import group_members

        if not (self.root / "tunery.db").exists():
            return
        for row in self.query("SELECT process_started FROM attempts"):
            pid = worker_process(row["process_started"])[0]
            members = group_members(pid) if pid else []
            if any(b"tunery.worker" in _cmdline(member) for member in members):
                kill_group(pid)

    def stop(self) -> None:
        """Kill the workers, then the server's process group (TERM, then KILL)."""
        with contextlib.suppress(Exception):
            self.kill_workers()
        if self.process is None:
            return
        kill_group(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        kill_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def worker_process(handle: str | None) -> tuple[int | None, str | None]:
    """(pid, start time) of the local worker an attempt's stored handle names."""
    from tunery.backends.base import Handle
    from tunery.backends.local import process_of

    return process_of(Handle.decode(handle)) if handle else (None, None)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- an SSE reader on a raw HTTP/1.1 connection -----------------------------------------


class SseStream:
    """One ``GET .../events`` connection; ``events()`` yields (kind, data bytes, received)."""

    def __init__(self, server: Server, run_id: str) -> None:
        self._server = server
        self._path = f"/api/v1/runs/{run_id}/events"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._chunked = False

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            HOST, self._server.port, limit=2**24
        )
        self._writer.write(
            (
                f"GET {self._path} HTTP/1.1\r\nHost: {HOST}:{self._server.port}\r\n"
                f"Authorization: Bearer {self._server.token}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await self._writer.drain()
        status = await self._reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"event stream answered {status!r}")
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                self._chunked = True

    async def _chunk(self) -> bytes:
        assert self._reader is not None
        if not self._chunked:
            return await self._reader.read(2**16)
        size_line = await self._reader.readline()
        if not size_line:
            return b""
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b""
        return (await self._reader.readexactly(size + 2))[:-2]

    async def events(self) -> AsyncIterator[tuple[str, bytes, float]]:
        buffer = b""
        while chunk := await self._chunk():
            received = time.time()
            buffer += chunk
            while (end := buffer.find(b"\n\n")) >= 0:
                block, buffer = buffer[:end], buffer[end + 2 :]
                kind, data = "message", b""
                for line in block.split(b"\n"):
                    if line.startswith(b"event: "):
                        kind = line[7:].decode()
                    elif line.startswith(b"data: "):
                        data = line[6:]
                if data:
                    yield kind, data, received

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


# --- shared state, and measurement 1: overhead to the first step ----------------------


@dataclass
class Context:
    server: Server
    api: Any  # httpx.AsyncClient
    dataset_id: str
    model_dir: Path
    threads: int
    children: list[asyncio.subprocess.Process] = field(default_factory=list)
    runs: int = 0

    async def submit(self, name: str) -> tuple[str, float, float]:
        self.runs += 1
        sent = time.time()
        response = await self.api.post(
            "/api/v1/runs", json=run_payload(self.dataset_id, f"{name}-{self.runs}")
        )
        returned = time.time()
        if response.status_code != 201:
            raise RuntimeError(f"submit answered {response.status_code}: {response.text}")
        return response.json()["id"], sent, returned

    async def attempt(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        """The run's active attempt (id, pid) once the scheduler recorded its worker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.server.query(
                "SELECT id, process_started FROM attempts "
                "WHERE run_id = ? AND active = 1 AND process_started IS NOT NULL",
                run_id,
            )
            if rows:
                pid = worker_process(rows[0]["process_started"])[0]
                return {"id": rows[0]["id"], "pid": pid}
            await asyncio.sleep(0.005)
        raise RuntimeError(f"no worker started for {run_id} in {timeout:.0f}s")

    async def end_run(self, run_id: str, stopped: int | None = None) -> None:
        """Cancel the run unless it is over, kill the ``stopped`` worker group, and wait
        until every worker of the run is gone."""
        from tunery.backends.local import group_members

        run = (await self.api.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] not in TERMINAL:
            await self.api.post(f"/api/v1/runs/{run_id}/cancel")
        if stopped is not None:
            kill_group(stopped)
            kill_group(stopped, signal.SIGCONT)
        pids = [
            pid
            for row in self.server.query(
                "SELECT process_started FROM attempts WHERE run_id = ?", run_id
            )
            if (pid := worker_process(row["process_started"])[0]) is not None
        ]
        deadline = time.monotonic() + 30
        while any(group_members(pid) for pid in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for pid in pids:
            if group_members(pid):
                kill_group(pid)
                kill_group(pid, signal.SIGCONT)


async def first_step_round(ctx: Context) -> dict[str, Any]:
    """Submit, watch, and time POST sent -> first metrics event received."""
    run_id, sent, returned = await ctx.submit("first-step")
    stream = SseStream(ctx.server, run_id)
    timeline: dict[str, float] = {}

    async def watch() -> float:
        await stream.open()
        async for kind, data, received in stream.events():
            event = json.loads(data)
            label = kind
            if kind == "status":
                label = f"status {event['status']}"
            elif kind == "phase":
                label = f"phase {event['phase']}"
            elif kind == "log":
                label = f"log {event['message'][:40]!r}"
            timeline.setdefault(label, iso_seconds(event["at"]) - sent)
            if kind == "metrics":
                timeline["received"] = received - sent
                return received
            if kind == "status" and event["status"] in TERMINAL:
                raise RuntimeError(f"run {run_id} ended {event['status']} before a step")
        raise RuntimeError(f"the event stream of {run_id} ended before a step")

    try:
        received = await asyncio.wait_for(watch(), FIRST_STEP_TIMEOUT)
        rows = ctx.server.query(
            "SELECT process_started FROM attempts WHERE run_id = ? AND number = 1", run_id
        )
        started = worker_process(rows[0]["process_started"])[1] if rows else None
        if started:
            timeline["worker process started"] = process_started_at(started) - sent
    finally:
        await stream.close()
        await ctx.end_run(run_id)
    return {
        "seconds": received - sent,
        "post_seconds": returned - sent,
        "timeline": dict(sorted(timeline.items(), key=lambda item: item[1])),
    }


async def baseline_round(ctx: Context) -> dict[str, Any]:
    """The same setup and one step in a fresh ``python -c``, timed from its start."""
    started = time.time()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        BASELINE_CODE,
        str(ctx.model_dir),
        str(DATASET),
        str(ctx.threads),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ctx.server.env,
        start_new_session=True,
    )
    ctx.children.append(process)
    out, err = await process.communicate()
    ctx.children.remove(process)
    if process.returncode != 0:
        raise RuntimeError(f"the baseline failed:\n{err.decode()[-3000:]}")
    times = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "seconds": times["step_end"] - started,
        "parts": {
            "interpreter start": times["start"] - started,
            "imports": times["imported"] - times["start"],
            "load model+tokenizer": times["loaded"] - times["imported"],
            "prepare data": times["data"] - times["loaded"],
            "attach LoRA": times["lora"] - times["data"],
            "first step": times["step_end"] - times["lora"],
        },
    }


# --- measurement 2: live events fan-out ---------------------------------------------------


@dataclass
class Watch:
    """What one watcher saw: events, latencies, order."""

    count: int = 0
    last_seq: int = 0
    last_received: float = 0.0
    out_of_order: int = 0
    latencies: list[float] = field(default_factory=list)
    polls: int = 0
    poll_bytes: int = 0
    connected: bool = False


@dataclass
class Target:
    seq: int | None = None

    def reached(self, watch: Watch) -> bool:
        return self.seq is not None and watch.last_seq >= self.seq


async def push_watcher(stream: SseStream, watch: Watch, target: Target) -> None:
    await stream.open()
    async for kind, data, received in stream.events():
        watch.connected = True
        if kind != "metrics":
            continue
        seq, end = number_after(data, b'"seq":')
        sent_at, _ = number_after(data, b'"sent_at":', end)
        if seq != watch.last_seq + 1:
            watch.out_of_order += 1
        watch.last_seq = int(seq)
        watch.count += 1
        watch.last_received = received
        watch.latencies.append(received - sent_at)
        if target.reached(watch):
            return


async def poll_watcher(api: Any, run_id: str, watch: Watch, target: Target, offset: float) -> None:
    """GET .../metrics every POLL_SECONDS; new events are found from the end of the list."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(offset)
    next_at = loop.time()
    while not target.reached(watch):
        response = await api.get(f"/api/v1/runs/{run_id}/metrics")
        received = time.time()
        body = response.content
        watch.polls += 1
        watch.poll_bytes += len(body)
        watch.connected = True
        position, newest = len(body), watch.last_seq
        while (start := body.rfind(b'"seq":', 0, position)) >= 0:
            seq, end = number_after(body, b'"seq":', start)
            if seq <= watch.last_seq:
                break
            sent_at, _ = number_after(body, b'"sent_at":', end)
            watch.count += 1
            watch.latencies.append(received - sent_at)
            watch.last_received = received
            newest = max(newest, int(seq))
            position = start
        watch.last_seq = newest
        next_at = max(next_at + POLL_SECONDS, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def fanout_round(ctx: Context, mode: str, k: int, seconds: float, batch: int) -> dict:
    """One run driven by the fake worker while K watchers push-stream or poll it."""
    server = ctx.server
    assert server.process is not None
    run_id, _, _ = await ctx.submit(f"fanout-{mode}-{k}")
    attempt = await ctx.attempt(run_id)
    kill_group(attempt["pid"], signal.SIGSTOP)  # alive (no reaping) but silent
    attempt["token"] = take_over_token(server.root / "tunery.db", attempt["id"])
    watches = [Watch() for _ in range(k)]
    target = Target()
    streams: list[SseStream] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for watch in watches:
            if mode == "push":
                stream = SseStream(server, run_id)
                streams.append(stream)
                tasks.append(asyncio.create_task(push_watcher(stream, watch, target)))
            else:
                offset = random.uniform(0, POLL_SECONDS)
                tasks.append(
                    asyncio.create_task(poll_watcher(ctx.api, run_id, watch, target, offset))
                )
        deadline = time.monotonic() + 30
        while not all(w.connected for w in watches) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        driver = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--driver",
            json.dumps([server.url, attempt["id"], attempt["token"], seconds, batch]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        ctx.children.append(driver)
        assert driver.stdin is not None and driver.stdout is not None
        if (await driver.stdout.readline()).strip() != b"ready":
            raise RuntimeError("the driver did not start")
        server_cpu, own_cpu = process_cpu_seconds(server.process.pid), time.process_time()
        threads = thread_count(server.process.pid)
        started = time.time()
        driver.stdin.write(b"go\n")
        await driver.stdin.drain()
        driver.stdin.close()
        output = asyncio.create_task(driver.stdout.read())
        while not output.done():
            threads = max(threads, thread_count(server.process.pid))
            await asyncio.wait({output}, timeout=0.25)
        await driver.wait()
        ctx.children.remove(driver)
        driven = json.loads(output.result().decode().strip().splitlines()[-1])
        target.seq = driven["acked"]
        grace = time.monotonic() + max(5.0, seconds)
        while not all(target.reached(w) for w in watches) and time.monotonic() < grace:
            threads = max(threads, thread_count(server.process.pid))
            await asyncio.sleep(0.02)
        ended = time.time()
        server_cpu = process_cpu_seconds(server.process.pid) - server_cpu
        own_cpu = time.process_time() - own_cpu
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.close()
        await ctx.end_run(run_id, stopped=attempt["pid"])
    if driven["error"]:
        raise RuntimeError(f"the driver stopped: {driven['error']}")
    ingest_seconds = driven["last"] - driven["first"]
    delivered = sum(w.count for w in watches)
    last = max((w.last_received for w in watches), default=driven["last"])
    latencies = [value for w in watches for value in w.latencies]
    wall = ended - started
    return {
        "mode": mode,
        "watchers": k,
        "events": driven["acked"],
        "posts": driven["posts"],
        "ingest_per_s": driven["acked"] / ingest_seconds,
        "delivered_per_s": delivered / max(last - driven["first"], 1e-9),
        "delivered_share": delivered / max(1, k * driven["acked"]),
        "latency_p50": percentile(latencies, 0.5),
        "latency_p95": percentile(latencies, 0.95),
        "latency_max": max(latencies, default=None),
        "post_p50": driven["post_p50"],
        "post_p95": driven["post_p95"],
        "out_of_order": sum(w.out_of_order for w in watches),
        "polls": sum(w.polls for w in watches),
        "poll_mb": sum(w.poll_bytes for w in watches) / 1e6,
        "server_cpu_per_s": server_cpu / wall,
        "server_us_per_event": 1e6 * server_cpu / max(1, driven["acked"]),
        "watchers_cpu_per_s": own_cpu / wall,
        "driver_cpu_per_s": driven["cpu_seconds"] / ingest_seconds,
        "server_threads_max": threads,
        "result_accepted": driven["finished"],
    }


# --- orchestration and report -------------------------------------------------------------


def machine_info(threads: int) -> dict[str, Any]:
    versions = {}
    for package in ("torch", "transformers", "fastapi", "starlette", "uvicorn", "sqlalchemy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **versions,
        "torch_threads": threads,
        "sqlite": sqlite3.sqlite_version,
        "load_average_start": os.getloadavg()[0],
    }


def summarise_first_step(pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
    control = [c["seconds"] for c, _ in pairs]
    baseline = [b["seconds"] for _, b in pairs]
    labels = {label for c, _ in pairs for label in c["timeline"]}
    timeline = {
        label: statistics.median(values)
        for label in labels
        if len(values := [c["timeline"][label] for c, _ in pairs if label in c["timeline"]])
        == len(pairs)
    }
    return {
        "control_plane_seconds": spread(control),
        "baseline_seconds": spread(baseline),
        "overhead_seconds": spread([c - b for c, b in zip(control, baseline, strict=True)]),
        "ratio": spread([c / b for c, b in zip(control, baseline, strict=True)]),
        "timeline_median": dict(sorted(timeline.items(), key=lambda item: item[1])),
        "baseline_parts_median": {
            part: statistics.median(b["parts"][part] for _, b in pairs)
            for part in pairs[0][1]["parts"]
        },
        "post_seconds_median": statistics.median(c["post_seconds"] for c, _ in pairs),
    }


def summarise_fanout(rounds: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in sorted({r["watchers"] for r in rounds}):
        row: dict[str, Any] = {}
        for mode in ("push", "poll"):
            mine = [r for r in rounds if r["watchers"] == k and r["mode"] == mode]
            row[mode] = {
                key: statistics.median(r[key] for r in mine)
                for key in mine[0]
                if key not in ("mode", "watchers", "result_accepted")
                and all(r[key] is not None for r in mine)
            }
        push = [r for r in rounds if r["watchers"] == k and r["mode"] == "push"]
        poll = [r for r in rounds if r["watchers"] == k and r["mode"] == "poll"]
        row["ingest_push_over_poll"] = spread(
            [a["ingest_per_s"] / b["ingest_per_s"] for a, b in zip(push, poll, strict=True)]
        )
        row["p50_latency_poll_over_push"] = spread(
            [b["latency_p50"] / a["latency_p50"] for a, b in zip(push, poll, strict=True)]
        )
        out[str(k)] = row
    return out


def report(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"machine: {machine['cores']} cores {machine['cpu']}, python {machine['python']}, "
        f"torch {machine.get('torch')}, uvicorn {machine.get('uvicorn')}, "
        f"sqlite {machine['sqlite']}, torch threads {machine['torch_threads']}, "
        f"load {machine['load_average_start']:.2f} -> {machine['load_average_end']:.2f}",
        "",
    ]
    first = result.get("first_step")
    if first:
        s = first["summary"]
        n = len(first["rounds"])

        def fmt(entry: dict[str, float], unit: str = "s") -> str:
            return f"{entry['median']:.2f}{unit} (min {entry['min']:.2f}, max {entry['max']:.2f})"

        lines += [
            f"1. submit -> first step seen by a watcher ({n} interleaved rounds)",
            f"   control plane (POST -> first metrics event): {fmt(s['control_plane_seconds'])}",
            f"   baseline (fresh python -c: setup + 1 step):  {fmt(s['baseline_seconds'])}",
            f"   overhead (per-round difference):             {fmt(s['overhead_seconds'])}",
            f"   ratio control plane / baseline:              {fmt(s['ratio'], '×')}",
            "   control-plane timeline, median seconds after the POST (server commit times):",
        ]
        previous = 0.0
        for label, at in s["timeline_median"].items():
            lines.append(f"     {at:6.2f}  (+{at - previous:5.2f})  {label}")
            previous = at
        lines.append("   baseline parts, median seconds:")
        for part, seconds in s["baseline_parts_median"].items():
            lines.append(f"     {seconds:6.2f}  {part}")
        lines.append("")
    fanout = result.get("fanout")
    if fanout:
        settings = fanout["settings"]
        lines += [
            f"2. live events fan-out: {settings['seconds']:.0f} s per round, batches of "
            f"{settings['batch']} events per POST, {settings['rounds']} rounds per K, "
            "push and poll interleaved (medians)",
            "   K  mode  ingest/s  delivered/s  share  p50 ms   p95 ms  POST p50 ms  "
            "server CPU  µs/event  watchers CPU  threads",
        ]
        for k, row in fanout["summary"].items():
            for mode in ("push", "poll"):
                r = row[mode]
                lines.append(
                    f"  {int(k):2d}  {mode:4s}  {r['ingest_per_s']:8.0f}  "
                    f"{r['delivered_per_s']:11.0f}  {r['delivered_share']:5.2f}  "
                    f"{1e3 * r.get('latency_p50', float('nan')):6.1f}  "
                    f"{1e3 * r.get('latency_p95', float('nan')):7.1f}  "
                    f"{1e3 * r['post_p50']:11.1f}  {r['server_cpu_per_s']:10.2f}  "
                    f"{r['server_us_per_event']:8.0f}  {r['watchers_cpu_per_s']:12.2f}  "
                    f"{r['server_threads_max']:7.0f}"
                )
            ingest, latency = row["ingest_push_over_poll"], row["p50_latency_poll_over_push"]
            lines.append(
                f"      ingest push/poll {ingest['median']:.2f}× "
                f"(min {ingest['min']:.2f}, max {ingest['max']:.2f}); "
                f"p50 latency poll/push {latency['median']:.1f}× "
                f"(min {latency['min']:.1f}, max {latency['max']:.1f})"
            )
        lines.append(
            "   share: delivered / (K × ingested) by the end of the round; "
            "CPU in cores busy (1.00 = one core)"
        )
    zombies = result["server_zombie_children"]
    lines.append(
        f"server: {zombies} zombie child processes after {result['runs_submitted']} runs"
        " (exited workers are reaped on the scheduler's next tick, within a second)"
    )
    lines += [f"WARNING: {warning}" for warning in result.get("warnings", [])]
    return "\n".join(lines)


async def run_benchmark(args: argparse.Namespace, server: Server, model_dir: Path) -> dict:
    import httpx

    result: dict[str, Any] = {"warnings": []}
    await server.start()
    async with httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=60,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
    ) as api:
        with DATASET.open("rb") as file:
            response = await api.post("/api/v1/datasets", files={"file": (DATASET.name, file)})
        if response.status_code != 201:
            raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
        ctx = Context(server, api, response.json()["id"], model_dir, args.threads)
        try:
            if args.rounds:
                pairs = []
                for number in range(1, args.rounds + 1):
                    control = await first_step_round(ctx)
                    baseline = await baseline_round(ctx)
                    pairs.append((control, baseline))
                    print(
                        f"first step {number}/{args.rounds}: control plane "
                        f"{control['seconds']:.2f} s, baseline {baseline['seconds']:.2f} s",
                        file=sys.stderr,
                    )
                result["first_step"] = {
                    "rounds": [{"control_plane": c, "baseline": b} for c, b in pairs],
                    "summary": summarise_first_step(pairs),
                }
            rounds = []
            for k in args.watchers:
                for number in range(1, args.fanout_rounds + 1):
                    for mode in ("push", "poll") if number % 2 else ("poll", "push"):
                        measured = await fanout_round(ctx, mode, k, args.seconds, args.batch)
                        rounds.append(measured)
                        print(
                            f"fan-out K={k} {mode} {number}/{args.fanout_rounds}: "
                            f"ingest {measured['ingest_per_s']:.0f}/s, delivered "
                            f"{measured['delivered_per_s']:.0f}/s "
                            f"({measured['delivered_share']:.0%}), p50 "
                            f"{1e3 * (measured['latency_p50'] or float('nan')):.0f} ms",
                            file=sys.stderr,
                        )
                        if measured["delivered_share"] < 0.999:
                            result["warnings"].append(
                                f"K={k} {mode}: only {measured['delivered_share']:.1%} of the "
                                "events reached the watchers within the grace period"
                            )
                        if not measured["result_accepted"]:
                            result["warnings"].append(
                                f"K={k} {mode}: the server refused the driver's result event"
                            )
                        if measured["out_of_order"]:
                            result["warnings"].append(
                                f"K={k} {mode}: {measured['out_of_order']} gaps or repeats "
                                "in the streams' sequence numbers"
                            )
            if rounds:
                result["fanout"] = {
                    "settings": {
                        "seconds": args.seconds,
                        "batch": args.batch,
                        "rounds": args.fanout_rounds,
                        "watchers": args.watchers,
                    },
                    "rounds": rounds,
                    "summary": summarise_fanout(rounds),
                }
        finally:
            for child in ctx.children:
                kill_group(child.pid)
        assert server.process is not None
        result["server_zombie_children"] = zombie_children(server.process.pid)
        result["runs_submitted"] = ctx.runs
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="first-step rounds (0: skip)")
    parser.add_argument(
        "--watchers",
        type=lambda text: [int(k) for k in text.split(",") if k],
        default=[1, 10, 50],
        help="comma-separated K values for the fan-out (empty: skip)",
    )
    parser.add_argument("--fanout-rounds", type=int, help="push/poll pairs per K (default: 5)")
    parser.add_argument("--seconds", type=float, default=8.0, help="driving time per round")
    parser.add_argument("--batch", type=int, default=10, help="events per POST of the driver")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (node and baseline)")
    parser.add_argument("--quick", action="store_true", help="1 round, K=1,5, 5 s (for CI)")
    parser.add_argument("--json", type=Path, help="also write the numbers here as JSON")
    parser.add_argument("--model-dir", type=Path, help="demo model directory to use")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.watchers, args.seconds, args.fanout_rounds = 1, [1, 5], 5.0, 1
    if args.fanout_rounds is None:
        args.fanout_rounds = 5
    return args


def main() -> None:
    args = parse_args()
    if args.driver:
        url, attempt, token, seconds, batch = json.loads(args.driver)
        print(json.dumps(drive(url, attempt, token, seconds, batch)))
        return
    model_dir = demo_model(args.model_dir)
    machine = machine_info(args.threads)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-cp-") as tmp:
        server = Server(Path(tmp) / "data", free_port(), args.threads)
        server.prepare(model_dir)
        try:
            result = asyncio.run(run_benchmark(args, server, model_dir))
        except BaseException:
            print(f"server log (tail):\n{server.log()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    machine["load_average_end"] = os.getloadavg()[0]
    result = {"machine": machine, **result}
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
