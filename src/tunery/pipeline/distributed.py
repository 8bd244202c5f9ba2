"""Data-parallel training: one process per device, gradients all-reduced every optimizer step.

Every rank holds a replica of the base model and the adapter. A step, on every rank:

1. The step's global micro-batches are the same everywhere (an epoch's order depends on the
   seed alone, ``pipeline.budget``). Each is split by tokens, not rows, into disjoint shares
   (``split_by_tokens``), so no rank waits on a longer one; rank r trains on share r.
2. Forward and backward on the share, the loss normalised over the share itself (per
   trained token for supervised fine-tuning, per pair for DPO).
3. One all-reduce sums the gradients, each rank's weighted by its share of the step's trained
   tokens (or pairs): the gradient of the whole step's loss, exactly what one device computes
   with the whole batch. A second, tiny one carries the step's loss, its real tokens, the
   objective's metrics (DPO's rewards, SFT's mean token accuracy) and rank 0's cancel, finish
   and pause requests, so every rank stops at the same step.

Why not ``DistributedDataParallel``: the loss runs the decoder and the output head as separate
calls (``pipeline.loss``), around the wrapper's forward that DDP's bucket reducer hooks; and
an adapter's gradients are megabytes, so one flat all-reduce per optimizer step costs little
next to the step and gains nothing from overlapping the backward pass.

``batch_size`` is per device, as in Hugging Face and Axolotl: a micro-batch holds
``batch_size * devices`` examples. A run resumed on another number of devices keeps the
micro-batch its checkpoint was planned with (same steps, same learning-rate schedule) and
re-splits each one across the devices it has now, in parts of about ``batch_size`` examples,
so memory per device stays what was planned; only which device trains which example changes.

The process group is the default one (``torch.distributed``): NCCL on CUDA, gloo on CPU,
over loopback (a run's ranks share one node: the local pool's machine, or one Ray node
held with ``STRICT_PACK``), with a timeout on every collective so a rank that stops
answering cannot hang the others for longer than ``COLLECTIVE_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunery.errors import TuneryError
from tunery.pipeline.chat import Example, PairExample
from tunery.pipeline.config import TrainingConfig
from tunery.pipeline.reporting import EvalMetrics, Reporter, StepMetrics

if TYPE_CHECKING:
    import torch

    from tunery.phases import Phase

COLLECTIVE_TIMEOUT_SECONDS = 600.0
"""The longest a rank waits in one collective: past it the collective fails on every rank
still in it. Ranks wait in the next step's all-reduce while rank 0 writes (and uploads) a
checkpoint, which may take as long as a transfer may (``worker.transfers``)."""
LOOPBACK_INTERFACE = "lo"
"""The interface gloo and NCCL bootstrap over: a run's ranks always share one node."""


class NotEnoughDevices(TuneryError):
    """The node shows fewer GPUs than the tier trains a run on: a placement problem, not the
    recipe's; another node of the tier may have them."""

    code = "not_enough_devices"
    transient = True


@dataclass(frozen=True)
class World:
    """This process's place in a run's processes: rank ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 reports, writes checkpoints, saves, exports and samples."""
        return self.rank == 0


Item = Example | PairExample
"""What a micro-batch holds: examples, or preference pairs (both answers of each)."""


def split_by_tokens(batch: list[Item], parts: int) -> list[list[Item]]:
    """``batch`` in ``parts`` disjoint shares of nearly equal tokens.

    Longest item first, each to the share with the fewest tokens so far (ties to the lower
    share); each share keeps the batch's order. A function of the batch alone, so every rank
    computes the same split.
    """
    tokens = [0] * parts
    members: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(batch)), key=lambda i: (-batch[i].tokens, i)):
        lightest = min(range(parts), key=lambda part: (tokens[part], part))
        members[lightest].append(index)
        tokens[lightest] += batch[index].tokens
    return [[batch[index] for index in sorted(share)] for share in members]


def rank_share(micro_batches: list[list[Item]], world: World, batch_size: int) -> list[list[Item]]:
    """The micro-batches rank ``world.rank`` trains on in a step of ``micro_batches``.

    Each global micro-batch is split by tokens into ``max(world.size, ⌈len / batch_size⌉)``
    parts and the rank takes parts ``rank, rank + size, …``: one part per micro-batch when
    the run has the devices it was planned for, more (each about ``batch_size`` examples)
    when it resumed on fewer. Empty parts (a short last micro-batch) are left out.
    """
    shares: list[list[Item]] = []
    for batch in micro_batches:
        parts = max(world.size, math.ceil(len(batch) / batch_size))
        if parts == 1:
            shares.append(batch)
            continue
        split = split_by_tokens(batch, parts)
        shares.extend(part for part in split[world.rank :: world.size] if part)
    return shares


def loss_units(micro_batches: list[list[Item]]) -> int:
    """What a step's loss is averaged over: trained tokens of examples, or pairs (DPO)."""
    return sum(
        1 if isinstance(item, PairExample) else item.trained_tokens
        for batch in micro_batches
        for item in batch
    )


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of rank ``rank``'s random draws (dropout) in 0-based step ``step``: each rank
    draws its own, and a resumed run draws what an uninterrupted one would have."""
    return (seed * 1_000_003 + step * 1_009 + rank) % 2**63


def join_world(
    rank: int, size: int, *, store_host: str, store_port: int, timeout_seconds: float
) -> tuple[World, torch.device]:
    """Join the run's process group through the rendezvous store at ``store_host:port``.

    Returns this rank's place and its device: ``cuda:RANK`` on CUDA (NCCL), else the CPU
    (gloo). Raises NotEnoughDevices when the node shows fewer GPUs than ranks.
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_seconds)
    if torch.cuda.is_available():
        visible = torch.cuda.device_count()
        if visible < size:
            raise NotEnoughDevices(
                f"this run trains on {size} GPUs, one per process, but the node shows {visible}",
                hint="give the tier as many GPUs per node as its gpus setting asks for",
            )
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        backend = "nccl"
        os.environ.setdefault("NCCL_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    else:
        device = torch.device("cpu")
        backend = "gloo"
        os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    store = dist.TCPStore(store_host, store_port, size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return World(rank, size), device


def leave_world() -> None:
    """Destroy the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank went away."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("gloo", "Gloo", "NCCL", "Connection closed by peer")
    )


class DataParallel:
    """This process's part of a data-parallel run: its share of each step, the all-reduce,
    and the decisions every rank must take together.

    ``requests`` is rank 0's view of cancel, finish and pause (the caller's reporter);
    ``events`` where rank 0's reports go. ``reporter`` is what the pipeline on this rank reports to:
    rank 0's events reach ``events``, other ranks' are dropped (rank 0 speaks for the run),
    and on every rank cancel, finish and pause are the requests agreed at the last step.
    """

    def __init__(
        self, world: World, device: torch.device, *, events: Reporter | None = None
    ) -> None:
        self.world = world
        self.device = device
        self._events = events if world.is_main else None
        self.stop_agreed = False
        self.finish_agreed = False
        self.pause_agreed = False
        self._weight = 1.0
        self._flat: torch.Tensor | None = None
        self.all_reduce_seconds: list[float] = []
        self.reporter = RankReporter(self, self._events)

    @classmethod
    def single(cls, device: torch.device) -> DataParallel:
        """One process alone: shares are whole micro-batches, nothing is all-reduced."""
        return cls(World(), device)

    def start(self, parameters: list[torch.nn.Parameter]) -> None:
        """Give every rank rank 0's trainable weights (they agree already when every rank
        seeded alike or loaded the same checkpoint; this makes it certain)."""
        if self.world.size == 1:
            return
        import torch.distributed as dist

        flat = self._buffer(parameters)
        self._gather(parameters, flat, grads=False)
        dist.broadcast(flat, src=0)
        self._scatter(parameters, flat, grads=False)

    def share(
        self, step: int, micro_batches: list[list[Item]], *, batch_size: int, seed: int
    ) -> list[list[Item]]:
        """This rank's micro-batches of 0-based step ``step`` (``rank_share``); seeds the
        step's random draws per rank."""
        shares = rank_share(micro_batches, self.world, batch_size)
        if self.world.size > 1:
            import torch

            torch.manual_seed(step_seed(seed, step, self.world.rank))
            total = loss_units(micro_batches)
            self._weight = loss_units(shares) / total if total else 0.0
        return shares

    def all_reduce(
        self,
        parameters: list[torch.nn.Parameter],
        loss: float,
        real_tokens: int,
        metrics: dict[str, float],
    ) -> tuple[float, int, dict[str, float]]:
        """Sum the ranks' weighted gradients into every rank's ``.grad``; returns the step's
        loss, real tokens and objective ``metrics`` (means, like the loss) over all ranks, and
        agrees on rank 0's cancel, finish and pause. Every rank must name the same metrics."""
        if self.world.size == 1:
            return loss, real_tokens, metrics
        import torch
        import torch.distributed as dist

        started = time.perf_counter()
        flat = self._buffer(parameters)
        self._gather(parameters, flat, grads=True)
        flat.mul_(self._weight)
        dist.all_reduce(flat)
        events = self._events
        asked = (
            (events.should_stop(), events.should_finish(), events.should_pause())
            if events
            else (False, False, False)
        )
        names = sorted(metrics)
        numbers = torch.tensor(
            [
                loss * self._weight,
                float(real_tokens),
                *map(float, asked),
                *(metrics[name] * self._weight for name in names),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(numbers)
        self._scatter(parameters, flat, grads=True)
        step_loss, tokens, stop, finish, pause, *means = numbers.tolist()
        self.all_reduce_seconds.append(time.perf_counter() - started)
        self.stop_agreed = self.stop_agreed or stop > 0
        self.finish_agreed = self.finish_agreed or finish > 0
        self.pause_agreed = self.pause_agreed or pause > 0
        return step_loss, round(tokens), dict(zip(names, means, strict=True))

    def agree(self, decision: bool) -> bool:
        """Rank 0's ``decision``, on every rank (early stopping, say, where ranks' own
        evaluations could differ in the last bit)."""
        if self.world.size == 1:
            return decision
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(decision)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def batch_summary(self, config: TrainingConfig, micro_batch_examples: int) -> dict[str, Any]:
        """The run's batch as ``run.json`` records it: per device, devices planned, the
        effective batch; the processes that trained this attempt, their backend and the
        median all-reduce time per step."""
        seconds = self.all_reduce_seconds
        summary: dict[str, Any] = {
            "per_device": config.batch_size,
            "devices": max(1, micro_batch_examples // config.batch_size),
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "effective": micro_batch_examples * config.gradient_accumulation_steps,
            "processes": self.world.size,
        }
        if self.world.size > 1:
            import torch.distributed as dist

            summary["backend"] = dist.get_backend()
            summary["all_reduce_seconds_median"] = statistics.median(seconds) if seconds else None
        return summary

    def _buffer(self, parameters: list[torch.nn.Parameter]) -> torch.Tensor:
        # One float32 buffer for every trainable value, kept for the run: the all-reduce
        # bucket the memory planner counts.
        if self._flat is None:
            import torch

            total = sum(parameter.numel() for parameter in parameters)
            self._flat = torch.empty(total, dtype=torch.float32, device=self.device)
        return self._flat

    @staticmethod
    def _gather(parameters: list[torch.nn.Parameter], flat: torch.Tensor, *, grads: bool) -> None:
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            chunk = flat[offset : offset + size]
            source = parameter.grad if grads else parameter.detach()
            if source is None:
                chunk.zero_()  # a rank without examples this step adds nothing
            else:
                chunk.copy_(source.reshape(-1))
            offset += size

    @staticmethod
    def _scatter(parameters: list[torch.nn.Parameter], flat: torch.Tensor, *, grads: bool) -> None:
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            chunk = flat[offset : offset + size].view_as(parameter)
            if not grads:
                parameter.data.copy_(chunk)
            elif parameter.grad is None:
                parameter.grad = chunk.to(parameter.dtype, copy=True)
            else:
                parameter.grad.copy_(chunk)
            offset += size


class RankReporter:
    """What the pipeline on a rank reports to (see ``DataParallel``)."""

    def __init__(self, parallel: DataParallel, events: Reporter | None) -> None:
        self._parallel = parallel
        self._events = events

    def phase(self, phase: Phase) -> None:
        if self._events is not None:
            self._events.phase(phase)

    def log(self, message: str) -> None:
        if self._events is not None:
            self._events.log(message)

    def metrics(self, metrics: StepMetrics) -> None:
        if self._events is not None:
            self._events.metrics(metrics)

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        if self._events is not None:
            self._events.eval_metrics(metrics)

    def resumed(self, history: list[dict[str, Any]]) -> None:
        if self._events is not None:
            self._events.resumed(history)

    def should_stop(self) -> bool:
        return self._parallel.stop_agreed

    def should_finish(self) -> bool:
        return self._parallel.finish_agreed

    def should_pause(self) -> bool:
        return self._parallel.pause_agreed
