"""A Ray cluster of real nodes on loopback addresses, for the ``ray`` tests and the benchmark.

Ray rewrites ``127.0.0.1`` to the machine's external address, so every node binds its own
loopback address (``127.0.0.2`` for the head, ``127.0.0.3``… for the others). The cluster
uses token authentication (``RAY_AUTH_MODE=token``) with a token of its own, and one
``--temp-dir`` that every process of it names, so ``stop`` finds exactly its processes
(never ``ray stop``, which stops every Ray cluster on the machine). Each node's raylet
carries ``--node_id=<NodeID>`` on its command line: ``kill_node`` finds a node's raylet
that way and SIGKILLs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class NodeSpec:
    """One node: its loopback address, Ray resources and environment."""

    ip: str
    resources: dict[str, float] = field(default_factory=dict)
    num_cpus: int = 1
    num_gpus: int = 0
    """GPUs Ray counts on the node (none need exist: Ray only hands out their ids)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra variables for the node's processes (its workers inherit them)."""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class RayCluster:
    """A running cluster started by ``start_cluster``."""

    temp_dir: Path
    port: int
    env: dict[str, str]
    """What a client of this cluster needs in its environment (the auth token)."""
    nodes: list[NodeSpec]
    logs: Path
    """A directory every node reaches (set by whoever starts tunery on the cluster)."""

    @property
    def address(self) -> str:
        return f"{self.nodes[0].ip}:{self.port}"

    def pids(self) -> list[int]:
        """Every live process of this cluster: those naming its temp dir on their command
        line, and the workers its raylets started (children of those)."""
        marker = str(self.temp_dir).encode()
        own: set[int] = set()
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if marker in cmdline:
                own.add(pid)
        grown = True
        while grown:
            children = {pid for pid, parent in parents.items() if parent in own} - own
            own |= children
            grown = bool(children)
        return sorted(own)

    def raylets(self) -> dict[str, tuple[int, str]]:
        """The live raylets of this cluster: node address → (pid, node id)."""
        found = {}
        for pid in self.pids():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if not args or not args[0].endswith("raylet"):
                continue
            options = dict(
                arg[2:].split("=", 1) for arg in args if arg.startswith("--") and "=" in arg
            )
            if "node_id" in options and "node_ip_address" in options:
                found[options["node_ip_address"]] = (pid, options["node_id"])
        return found

    def kill_node(self, ip: str) -> str:
        """SIGKILL the raylet of the node at ``ip`` (found by its ``--node_id=``): the node
        is lost, as if its machine died. Returns the node id."""
        if ip not in self.raylets():
            raise LookupError(f"no raylet of this cluster runs at {ip}")
        pid, node_id = self.raylets()[ip]
        os.kill(pid, signal.SIGKILL)
        return node_id

    def add_node(self, node: NodeSpec) -> None:
        """Start one more node and join it to the cluster."""
        _ray_start(
            [*_node_args(node, self.temp_dir), f"--address={self.address}"],
            {**self.env, **node.env},
            self.logs,
        )
        self.nodes.append(node)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, every process of this cluster (by pid, never by name)."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.pids():
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def cluster_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNERY_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    return env


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            [RAY, "start", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=180,
        )


def _node_args(node: NodeSpec, temp_dir: Path) -> list[str]:
    args = [
        f"--node-ip-address={node.ip}",
        f"--num-cpus={node.num_cpus}",
        f"--num-gpus={node.num_gpus}",
        f"--resources={json.dumps(node.resources)}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if node.labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in node.labels.items()))
    return args


def start_cluster(root: Path, port: int, nodes: list[NodeSpec]) -> RayCluster:
    """Start ``nodes[0]`` as the head, then the others; returns once all joined."""
    # Ray's socket paths live under the temp dir and Unix sockets allow about 100 bytes:
    # pytest's deep tmp paths are too long, so the temp dir is short and under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="tunery-ray-", dir="/tmp"))
    env = cluster_env(secrets.token_hex(16))
    cluster = RayCluster(temp_dir=temp_dir, port=port, env=env, nodes=nodes, logs=root / "ray.log")
    try:
        for index, node in enumerate(nodes):
            args = _node_args(node, temp_dir)
            if index == 0:
                args += ["--head", f"--port={port}", "--include-dashboard=false"]
            else:
                args += [f"--address={cluster.address}"]
            _ray_start(args, {**env, **node.env}, cluster.logs)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(root: Path, port: int, nodes: list[NodeSpec]) -> Iterator[RayCluster]:
    cluster = start_cluster(root, port, nodes)
    try:
        yield cluster
    finally:
        cluster.stop()
