"""Workers on a Ray cluster: one detached actor per attempt, placed by a placement group.

Imported only when ``cluster.kind`` is ``ray`` (``pip install 'tunery[ray]'``). Tiers are
Ray resources: ``tier:<id>`` on the nodes that serve the tier (``ray start --resources``),
or the GPU and ``accelerator_type:<TYPE>`` Ray puts on GPU nodes itself, for tiers the
settings map to an accelerator. An attempt asks for one unit of its tier through a detached
placement group named after it, with one bundle per device its run trains on (a GPU each,
the tier's unit shared among them) packed onto one node (``STRICT_PACK``): the worker starts
one process per device there, and they rendezvous on the node's loopback
(``pipeline.ranks``). While the group is ``PENDING`` the run is ``waiting_for_gpu`` and the
group's scheduling state says why (no free node of the tier, or no node of it that can hold
the run's devices at all: the autoscaler's cue to add one). A tier no node has waits;
nothing here ever fails a run for it.

The actor itself takes no GPU, so Ray leaves every GPU of the node visible to it; before the
run starts it asks Ray which GPUs its group's bundles hold (a short task in each bundle) and
makes exactly those visible to the run's processes.

The actor is detached, so it outlives a control-plane restart (found again by name), and
asks Ray for no restarts or task retries: tunery owns the retry budget, and a lost node is
a lost attempt the scheduler retries elsewhere. Cancel kills the actor and removes its
group at once, which frees the node's tier unit and GPU. Groups of actors that died (a
finished attempt, a lost node) are removed by ``collect``, or Ray would re-place them and
hold a unit nobody uses.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tunery.backends.base import AttemptLaunch, Handle, Placement, TierCapacity, WorkerState

logger = logging.getLogger(__name__)
KIND = "ray"
NAMESPACE = "tunery"
NAME_PREFIX = "tunery:"
COLLECT_SECONDS = 2.0
"""How often ``collect`` reads the cluster's placement groups (one GCS call)."""
ACCELERATOR_SHARE = 0.001
"""What a task asks of ``accelerator_type:<TYPE>``: Ray's own convention for "a node with
this accelerator" (the GPU itself is counted by the ``GPU`` resource)."""


def attempt_name(tier: str, attempt_id: str) -> str:
    """The name of an attempt's actor and placement group (tier first: ``claim`` reads it)."""
    return f"{NAME_PREFIX}{tier}:{attempt_id}"


def tier_of(name: str) -> str:
    return name.removeprefix(NAME_PREFIX).split(":", 1)[0]


def bundle_gpu_ids() -> list[str]:
    """The GPUs Ray gave the task this runs as (the GPUs of its placement-group bundle)."""
    return [str(gpu) for gpu in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def show_group_gpus() -> None:
    """Make the GPUs held by the current placement group's bundles the only ones visible to
    this process and what it starts (``CUDA_VISIBLE_DEVICES``), in bundle order."""
    group = ray.util.get_current_placement_group()
    if group is None:
        return
    probe = ray.remote(bundle_gpu_ids)
    probes = [
        probe.options(
            num_cpus=0,
            num_gpus=bundle["GPU"],
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, index),
        ).remote()
        for index, bundle in enumerate(group.bundle_specs)
        if bundle.get("GPU")
    ]
    if probes:
        gpus = [gpu for ids in ray.get(probes) for gpu in ids]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)


class RayWorker:
    """The actor an attempt runs in: it runs the worker protocol, then leaves."""

    def run(self, server_url: str, attempt_id: str, token: str, checkpoint_root: str | None) -> int:
        from tunery.worker.attempt import run_attempt

        try:
            show_group_gpus()
            return run_attempt(
                server_url=server_url,
                attempt_id=attempt_id,
                token=token,
                checkpoint_root=Path(checkpoint_root) if checkpoint_root else None,
            )
        finally:
            # Frees the process; the group's unit is freed by ``collect`` removing the group.
            ray.actor.exit_actor()


class RayBackend:
    """Attempts as detached actors on the Ray cluster at ``address`` (``auto``: this node's).

    ``accelerators`` maps a tier to the Ray accelerator type whose nodes serve it instead of
    a ``tier:<id>`` resource; ``gpus`` gives each tier's GPUs per attempt (0 for CPU tiers),
    ``devices`` the processes its runs train on (a GPU each on GPU tiers; default 1).
    ``checkpoint_root`` is a directory every node of the cluster reaches at the same path;
    None keeps checkpoints through the server's API (no shared disk needed).
    """

    kind = KIND

    def __init__(
        self,
        *,
        address: str,
        checkpoint_root: str | None,
        gpus: Mapping[str, float],
        devices: Mapping[str, int] | None = None,
        accelerators: Mapping[str, str] | None = None,
    ) -> None:
        self._checkpoint_root = checkpoint_root
        self._gpus = dict(gpus)
        self._devices = dict(devices or {})
        self._accelerators = dict(accelerators or {})
        # Ray's type hints list only task options for ray.remote; actors take lifetime too.
        self._actor_class = ray.remote(  # type: ignore[call-overload]
            num_cpus=0, max_restarts=0, max_task_retries=0, lifetime="detached"
        )(RayWorker)
        self._groups: list[dict[str, Any]] = []
        self._groups_read = 0.0
        if not ray.is_initialized():
            ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
                logging_level=logging.WARNING,
            )
        for problem in self.unplaceable():
            logger.warning("%s: its runs will wait until such a node joins", problem)

    # Tiers and placement --------------------------------------------------------------

    @property
    def default_tier(self) -> str | None:
        """The first tier the settings list (``gpus`` keeps their order)."""
        return next(iter(self._gpus), None)

    def serves(self, tier: str) -> bool:
        """Every configured tier: a node of it may join the cluster (an autoscaler's cue)."""
        return tier in self._gpus

    def bundles(self, tier: str) -> list[dict[str, float]]:
        """The bundles one attempt of ``tier`` asks for, one per device, all on one node."""
        count = self._devices.get(tier, 1)
        bundle: dict[str, float] = {}
        if tier in self._accelerators:
            bundle[f"accelerator_type:{self._accelerators[tier]}"] = ACCELERATOR_SHARE
        else:
            # One unit of the tier per attempt, shared by its bundles (Ray keeps four decimals).
            bundle[f"tier:{tier}"] = math.floor(10_000 / count) / 10_000
        gpus = self._gpus.get(tier, 0)
        if gpus:
            bundle["GPU"] = gpus / count
        return [dict(bundle) for _ in range(count)]

    def capacity(self, tier: str, busy: Collection[str]) -> TierCapacity:
        """Attempts of ``tier`` live nodes could hold, and how many of them no placement
        group holds now. A node counts only for the attempts it could really take: one of
        the tier's nodes without the GPUs a run of the tier asks for holds none."""
        total = sum(self._fits(node, tier) for node in self._nodes_of(tier))
        held = sum(
            1
            for group in self._tunery_groups(fresh=True)
            if tier_of(group["name"]) == tier and group["state"] == "CREATED"
        )
        free = max(0, total - held)
        if tier not in self._accelerators:  # others may hold the tier's units too
            free = min(free, int(ray.available_resources().get(f"tier:{tier}", 0)))
        return TierCapacity(total=total, free=free)

    def _nodes_of(self, tier: str) -> list[dict[str, Any]]:
        """Live nodes that serve ``tier``: those Ray labels with its accelerator, or that
        offer its ``tier:<id>`` resource."""
        marker = (
            f"accelerator_type:{self._accelerators[tier]}"
            if tier in self._accelerators
            else f"tier:{tier}"
        )
        return [node for node in ray.nodes() if node.get("Alive") and marker in node["Resources"]]

    def _fits(self, node: dict[str, Any], tier: str) -> int:
        """How many attempts of ``tier`` ``node`` could hold at once."""
        resources = node["Resources"]
        gpus = float(self._gpus.get(tier) or 0)
        by_gpu = int(resources.get("GPU", 0) // gpus) if gpus else None
        if tier in self._accelerators:
            return by_gpu if by_gpu is not None else int(resources.get("GPU", 0))
        units = int(resources.get(f"tier:{tier}", 0))
        return units if by_gpu is None else min(units, by_gpu)

    def unplaceable(self) -> list[str]:
        """A sentence for each tier whose nodes in the cluster can never run one of its
        attempts (they lack the GPUs it asks for); empty when every tier's nodes can."""
        found = []
        for tier in self._gpus:
            nodes = self._nodes_of(tier)
            if nodes and not any(self._fits(node, tier) for node in nodes):
                found.append(self._lacking(tier, len(nodes)))
        return found

    def _lacking(self, tier: str, nodes: int) -> str:
        gpus = self._gpus.get(tier, 0)
        return (
            f"{nodes} node{'s' if nodes != 1 else ''} of tier {tier} in the cluster, but none "
            f"has the {gpus:g} GPU{'s' if gpus != 1 else ''} a run of the tier "
            f"{'trains on together' if gpus > 1 else 'asks for'} (the tier's gpus setting; 0 for "
            "a CPU tier)"
        )

    def claim(self, tier: str, busy: Collection[str]) -> str | None:
        """One attempt of a tier at a time waits for placement; the others stay queued.

        The queue's order (fair across accounts) is tunery's, so the cluster is shown one
        waiting attempt per tier, never the whole queue. Returns "" (the cluster picks the
        node) or None while an attempt of ``tier`` is still pending.
        """
        pending = any(
            tier_of(group["name"]) == tier and group["state"] == "PENDING"
            for group in self._tunery_groups(fresh=True)
        )
        return None if pending else ""

    # Workers --------------------------------------------------------------------------

    def start(self, launch: AttemptLaunch) -> Handle:
        """Create the attempt's placement group and actor; returns before either is placed."""
        name = attempt_name(launch.tier, launch.attempt_id)
        try:
            group = placement_group(
                self.bundles(launch.tier), strategy="STRICT_PACK", name=name, lifetime="detached"
            )
            actor = self._actor_class.options(
                name=name,
                namespace=NAMESPACE,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0),
            ).remote()
            # The token travels inside Ray's task spec, never on a command line.
            actor.run.remote(
                launch.server_url, launch.attempt_id, launch.token, self._checkpoint_root
            )
        except (ray.exceptions.RayError, ValueError, ConnectionError) as error:
            raise OSError(f"the Ray cluster refused the attempt: {error}") from error
        self._groups_read = 0.0
        return Handle(KIND, name)

    def placement(self, handle: Handle) -> Placement:
        """Pending (and why), running on a node, or gone (actor dead or never created)."""
        group = self._group(handle.ref)
        if group is None or not self._actor_alive(handle.ref):
            return Placement(WorkerState.GONE)
        table = placement_group_table(group)
        if table["state"] == "PENDING":
            return Placement(WorkerState.PENDING, reason=self._waiting_reason(handle.ref, table))
        node_id = table["bundles_to_node_id"].get(0, "")
        return Placement(WorkerState.RUNNING, node=self._node_address(node_id))

    def cancel(self, handle: Handle, *, grace_seconds: float) -> None:
        """Kill the actor at once and free its tier unit (Ray kills the process, so no
        grace applies)."""
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(handle.ref, namespace=NAMESPACE), no_restart=True)
        group = self._group(handle.ref)
        if group is not None:
            remove_placement_group(group)
        self._groups_read = 0.0

    def collect(self) -> None:
        """Remove the placement groups of actors that are gone (finished or lost)."""
        for group in self._tunery_groups():
            if group["state"] == "REMOVED" or self._actor_alive(group["name"]):
                continue
            with contextlib.suppress(ValueError):
                remove_placement_group(get_placement_group(group["name"]))
                logger.info("released the placement group of %s", group["name"])

    # Cluster state --------------------------------------------------------------------

    def _tunery_groups(self, *, fresh: bool = False) -> list[dict[str, Any]]:
        """Every placement group tunery made that is not removed, read at most every
        ``COLLECT_SECONDS`` unless ``fresh``."""
        if fresh or time.monotonic() - self._groups_read > COLLECT_SECONDS:
            self._groups = [
                group
                for group in placement_group_table().values()
                if group["name"].startswith(NAME_PREFIX) and group["state"] != "REMOVED"
            ]
            self._groups_read = time.monotonic()
        return self._groups

    @staticmethod
    def _group(name: str) -> PlacementGroup | None:
        try:
            return get_placement_group(name)
        except ValueError:
            return None

    @staticmethod
    def _actor_alive(name: str) -> bool:
        # get_actor finds actors that are alive, being created or waiting for placement;
        # a dead one is unknown.
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return False
        return True

    def _waiting_reason(self, name: str, table: dict[str, Any]) -> str:
        tier = tier_of(name)
        if table.get("stats", {}).get("scheduling_state") == "INFEASIBLE":
            nodes = self._nodes_of(tier)
            if nodes and not any(self._fits(node, tier) for node in nodes):
                return f"{self._lacking(tier, len(nodes))}: waiting for a node that has"
            return (
                f"no node of tier {tier} in the cluster yet: waiting for one to join "
                "(an autoscaler provisions it)"
            )
        return f"every node of tier {tier} is busy: waiting for one to be free"

    @staticmethod
    def _node_address(node_id: str) -> str:
        for node in ray.nodes():
            if node["NodeID"] == node_id:
                return node["NodeManagerAddress"]
        return node_id
