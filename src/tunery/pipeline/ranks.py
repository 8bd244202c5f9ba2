"""A data-parallel run's processes on one node: started, heard and ended together.

``run_recipe_on_ranks`` starts one process per rank (``torch.multiprocessing``, spawned, so
no rank inherits the caller's threads or CUDA state) and hosts their rendezvous store on
loopback. Each rank runs ``run_recipe`` with its part of the run (``pipeline.distributed``).
Rank 0's reports reach the caller's reporter over its pipe, and the caller's cancel, finish
and pause requests reach rank 0 through shared memory, from where the step's all-reduce carries
them to every rank. Each complete checkpoint goes to the caller's ``on_checkpoint`` before
rank 0 trains on.

The caller watches every rank. The first that ends without finishing its part (an error, an
out-of-memory, a SIGKILL, a lost GPU) ends the others at once (SIGKILL: they hold nothing
worth saving; the newest checkpoint is on disk), so no rank waits in a collective for a peer
that is gone. The error raised is the first rank's own; a rank that died without a word is
``RankLost``, transient, so the run retries like any lost worker. Ranks die with the process
that started them (``PR_SET_PDEATHSIG``), so a killed worker leaves none behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.errors import RunCancelled, RunPaused, TransientError, TuneryError
from tunery.pipeline.config import RunRecipe
from tunery.pipeline.distributed import COLLECTIVE_TIMEOUT_SECONDS
from tunery.pipeline.reporting import EvalMetrics, Reporter, StepMetrics

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from tunery.phases import Phase
    from tunery.pipeline.outcome import RunResult

STORE_HOST = "127.0.0.1"
POLL_SECONDS = 0.1
"""How often the caller looks at its ranks and its reporter's cancel, finish and pause
requests."""
LAST_WORDS_SECONDS = 1.0
"""How long the caller waits, once a rank ended badly, for what the others still say."""
_PR_SET_PDEATHSIG = 1
_STOP, _FINISH, _PAUSE = 0, 1, 2


class RankLost(TransientError):
    """A rank ended without a word (killed, or its process crashed): the attempt ends on every
    rank and the run retries, as for any lost worker."""

    code = "rank_lost"


class RankFailed(TuneryError):
    """A rank's own error, carried to the process that started the ranks."""

    def __init__(self, error: dict[str, str], *, transient: bool) -> None:
        super().__init__(error["message"], hint=error.get("hint", ""))
        self.code = error["code"]
        self.transient = transient


class RankCrashed(Exception):
    """A rank raised an exception that is no TuneryError (its traceback is in the log)."""


def threads_per_rank(threads: int | None, processes: int) -> int:
    """Torch threads for each of ``processes`` ranks sharing ``threads`` (None: the CPUs):
    more threads than cores in all slows every rank down."""
    return max(1, (threads or os.cpu_count() or 1) // processes)


@dataclass(frozen=True)
class RankJob:
    """What every rank runs: the recipe and where its inputs and outputs are."""

    recipe: RunRecipe
    out_dir: Path
    processes: int
    store_port: int
    threads: int
    dataset_paths: list[Path] | None = None
    validation_paths: list[Path] | None = None
    checkpoint_dir: Path | None = None
    base_cache_dir: Path | None = None
    init_adapter_dir: Path | None = None
    estimate: dict[str, Any] | None = None
    keeps_checkpoints: bool = False
    """The caller takes each complete checkpoint (``on_checkpoint``)."""
    parent_pid: int = field(default_factory=os.getpid)


def run_recipe_on_ranks(
    recipe: RunRecipe,
    out_dir: Path,
    reporter: Reporter,
    *,
    processes: int,
    threads: int | None = None,
    dataset_paths: list[Path] | None = None,
    validation_paths: list[Path] | None = None,
    checkpoint_dir: Path | None = None,
    base_cache_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    init_adapter_dir: Path | None = None,
    estimate: dict[str, Any] | None = None,
) -> RunResult:
    """``run_recipe`` on ``processes`` data-parallel processes of this node (one process:
    in this one). ``threads``: torch threads for all ranks together (None: the CPUs).

    Returns rank 0's result; raises the first failing rank's error (``RankFailed``,
    ``RunCancelled``, ``RankCrashed``) or ``RankLost``; ``RunPaused`` once every rank stopped
    for a pause, rank 0 having saved the checkpoint of that step.
    """
    import torch

    if processes == 1:
        from tunery.pipeline.recipe import run_recipe

        if threads:
            torch.set_num_threads(threads)
        result = run_recipe(
            recipe,
            out_dir,
            reporter,
            dataset_paths=dataset_paths,
            validation_paths=validation_paths,
            checkpoint_dir=checkpoint_dir,
            base_cache_dir=base_cache_dir,
            on_checkpoint=on_checkpoint,
            init_adapter_dir=init_adapter_dir,
            estimate=estimate,
        )
        assert result is not None  # a process alone is rank 0
        return result

    from datetime import timedelta

    import torch.distributed as dist
    import torch.multiprocessing

    # The rendezvous store lives here, on a port the system picks: no port can be taken
    # between choosing and binding it, and it outlives any rank.
    store = dist.TCPStore(
        STORE_HOST,
        0,
        processes,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS),
    )
    job = RankJob(
        recipe=recipe,
        out_dir=out_dir,
        processes=processes,
        store_port=store.port,
        threads=threads_per_rank(threads, processes),
        dataset_paths=dataset_paths,
        validation_paths=validation_paths,
        checkpoint_dir=checkpoint_dir,
        base_cache_dir=base_cache_dir,
        init_adapter_dir=init_adapter_dir,
        estimate=estimate,
        keeps_checkpoints=on_checkpoint is not None,
    )
    context = torch.multiprocessing.get_context("spawn")
    requests = context.RawArray("b", 3)  # no lock: a killed rank cannot leave one held
    pipes = [context.Pipe() for _ in range(processes)]
    ranks = [
        context.Process(
            target=rank_main,
            args=(rank, job, pipes[rank][1], requests),
            name=f"tunery-rank-{rank}",
        )
        for rank in range(processes)
    ]
    reporter.log(
        f"training on {processes} processes of this node, batch {recipe.training.batch_size} "
        f"per process, {job.threads} threads each"
    )
    supervisor = _Supervisor(ranks, [parent for parent, _ in pipes], reporter, on_checkpoint)
    try:
        for process in ranks:
            process.start()
        for _, child_end in pipes:
            child_end.close()
        return supervisor.watch(requests)
    finally:
        supervisor.end_all()
        del store


@dataclass
class _Outcome:
    kind: str
    """result (rank 0's) | done (another rank's) | paused (its step) | error | crash |
    peer_lost"""
    detail: Any = None


class _Supervisor:
    """The caller's side of the ranks: relays rank 0's reports, ends every rank at the first
    one that ends badly, and decides what the attempt raises."""

    def __init__(
        self,
        ranks: Sequence[BaseProcess],
        pipes: list[Connection],
        reporter: Reporter,
        on_checkpoint: Callable[[Path], None] | None,
    ) -> None:
        self._ranks = ranks
        self._pipes = dict(enumerate(pipes))
        self._reporter = reporter
        self._on_checkpoint = on_checkpoint
        self._outcomes: dict[int, _Outcome] = {}
        self._order: list[int] = []
        self._first_bad = 0

    def watch(self, requests: Any) -> RunResult:
        """Relay until every rank has ended, or one ended badly and the others were ended."""
        while True:
            requests[_STOP] = int(self._reporter.should_stop())
            requests[_FINISH] = int(self._reporter.should_finish())
            requests[_PAUSE] = int(self._reporter.should_pause())
            waiting: list[Connection | int] = [*self._pipes.values()]
            waiting += [rank.sentinel for rank in self._ranks]
            multiprocessing.connection.wait(waiting, timeout=POLL_SECONDS)
            # Exit codes first: whatever a rank said before it exited is heard after.
            exits = [rank.exitcode for rank in self._ranks]
            self._hear()
            bad = [index for index, code in enumerate(exits) if self._ended_badly(index, code)]
            if bad:
                self._first_bad = bad[0]
                self.end_all()
                deadline = time.monotonic() + LAST_WORDS_SECONDS
                while self._pipes and time.monotonic() < deadline:
                    multiprocessing.connection.wait(list(self._pipes.values()), timeout=0.05)
                    self._hear()
                break
            if all(code is not None for code in exits):
                break
        return self._verdict()

    def _ended_badly(self, index: int, exitcode: int | None) -> bool:
        outcome = self._outcomes.get(index)
        if outcome is not None:
            return outcome.kind not in ("result", "done", "paused")
        return exitcode is not None  # exited without a word

    def _hear(self) -> None:
        """Take every message the ranks have sent; a closed pipe is a rank gone."""
        for index, pipe in list(self._pipes.items()):
            try:
                while pipe.poll():
                    self._handle(index, pipe, pipe.recv())
            except (EOFError, OSError):
                del self._pipes[index]

    def _handle(self, index: int, pipe: Connection, message: tuple[str, Any]) -> None:
        kind, body = message
        if kind == "report":
            method, argument = body
            getattr(self._reporter, method)(argument)
        elif kind == "checkpoint":
            if self._on_checkpoint is not None:
                self._on_checkpoint(Path(body))
            pipe.send(True)
        else:
            self._outcomes[index] = _Outcome(kind, body)
            self._order.append(index)

    def _verdict(self) -> RunResult:
        """Rank 0's result, or the error of the rank that spoke first; RankLost when the
        first to end said nothing."""
        for index in self._order:
            outcome = self._outcomes[index]
            if outcome.kind == "error":
                error, transient = outcome.detail
                if error["code"] == RunCancelled.code:
                    raise RunCancelled(error["message"])
                raise RankFailed(error, transient=transient)
            if outcome.kind == "crash":
                raise RankCrashed(outcome.detail)
        main = self._outcomes.get(0)
        if main is not None and main.kind == "paused":
            raise RunPaused(main.detail)
        if len(self._outcomes) == len(self._ranks) and main is not None and main.kind == "result":
            result: RunResult = main.detail
            return result
        lost = self._first_bad
        raise RankLost(
            f"rank {lost} of {len(self._ranks)} ended without finishing "
            f"({_exit_description(self._ranks[lost].exitcode)}); the attempt was stopped "
            "on every rank",
            hint="the run retries from its newest checkpoint",
        )

    def end_all(self) -> None:
        """SIGKILL every rank still running and wait for it."""
        started = [rank for rank in self._ranks if rank.pid is not None]
        for rank in started:
            if rank.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    rank.kill()
        for rank in started:
            rank.join()


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running when stopped"
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


class _ParentLink:
    """Rank 0's reporter: its events go to the process that started the ranks; cancel and
    finish are what that process was asked."""

    def __init__(self, pipe: Connection, requests: Any) -> None:
        self._pipe = pipe
        self._requests = requests

    def _send(self, method: str, argument: Any) -> None:
        self._pipe.send(("report", (method, argument)))

    def phase(self, phase: Phase) -> None:
        self._send("phase", phase)

    def log(self, message: str) -> None:
        self._send("log", message)

    def metrics(self, metrics: StepMetrics) -> None:
        self._send("metrics", metrics)

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        self._send("eval_metrics", metrics)

    def resumed(self, history: list[dict[str, Any]]) -> None:
        self._send("resumed", history)

    def should_stop(self) -> bool:
        return bool(self._requests[_STOP])

    def should_finish(self) -> bool:
        return bool(self._requests[_FINISH])

    def should_pause(self) -> bool:
        return bool(self._requests[_PAUSE])

    def keep_checkpoint(self, checkpoint: Path) -> None:
        """Hand a complete checkpoint to the caller; returns once it has it."""
        self._pipe.send(("checkpoint", str(checkpoint)))
        self._pipe.recv()


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the process that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the ranks end when their collectives fail instead
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request took effect


def rank_main(rank: int, job: RankJob, pipe: Connection, requests: Any) -> None:
    """The body of rank ``rank``'s process (``run_recipe_on_ranks``)."""
    _die_with_parent(job.parent_pid)
    # Ctrl-C and the like reach the whole process group; the caller decides for the ranks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch
    from transformers.utils import logging as transformers_logging

    from tunery.pipeline.distributed import (
        DataParallel,
        is_collective_failure,
        join_world,
        leave_world,
    )
    from tunery.pipeline.recipe import run_recipe

    torch.set_num_threads(job.threads)
    # One loading bar per rank is noise, and tqdm's bars make a semaphore that a rank
    # ending with os._exit would leave to the resource tracker.
    transformers_logging.disable_progress_bar()
    outcome: tuple[str, Any]
    try:
        world, device = join_world(
            rank,
            job.processes,
            store_host=STORE_HOST,
            store_port=job.store_port,
            timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS,
        )
        link = _ParentLink(pipe, requests) if rank == 0 else None
        parallel = DataParallel(world, device, events=link)
        result = run_recipe(
            job.recipe,
            job.out_dir,
            parallel.reporter,
            dataset_paths=job.dataset_paths,
            validation_paths=job.validation_paths,
            checkpoint_dir=job.checkpoint_dir,
            base_cache_dir=job.base_cache_dir,
            on_checkpoint=link.keep_checkpoint if link and job.keeps_checkpoints else None,
            init_adapter_dir=job.init_adapter_dir,
            estimate=job.estimate,
            data_parallel=parallel,
        )
        outcome = ("result", result) if result is not None else ("done", None)
    except RunPaused as paused:
        outcome = ("paused", paused.step)  # after rank 0 saved the checkpoint of that step
    except TuneryError as error:
        outcome = ("error", (error.as_dict(), error.transient))
    except Exception as error:
        if is_collective_failure(error):
            outcome = ("peer_lost", f"{type(error).__name__}: {error}")
        else:
            traceback.print_exc()
            outcome = ("crash", f"rank {rank}: {type(error).__name__}: {error}")
    with contextlib.suppress(OSError):
        pipe.send(outcome)
    finished = outcome[0] in ("result", "done", "paused")
    if finished:
        leave_world()
    sys.stdout.flush()
    sys.stderr.flush()
    # At once: everything the rank made is on disk or sent, and the interpreter's own
    # shutdown of a process that ran torch can take seconds.
    os._exit(0 if finished else 1)
