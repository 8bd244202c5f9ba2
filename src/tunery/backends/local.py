"""Workers as local processes, each in its own process group (session).

Workers outlive a control-plane crash on purpose: a restarted server finds them again by
the handle's reference, ``PID:START`` (the process start time, so a reused pid is never
mistaken for the worker), and lets them finish. Cancel signals the whole group, so
anything the worker started (the GGUF converter, tokenizer threads) stops with it. Process
ids stay in this module: everyone else sees an opaque handle.

Placement comes from the configured nodes: one attempt per node. A worker reads its token
from a pipe on its stdin, never from its command line (which any local user can read) nor
its environment (which ``/proc/PID/environ`` shows for the process's whole life), and gets
an environment of its own (``child_environment``): the variables training needs, none of
the server's secrets. Its checkpoints go to the run folders of the data dir, this pool's
checkpoint store; its output goes to the run folder's ``attempt-N.log``; its temporary
files (the run's data copy, exports in progress) to ``DATA_DIR/scratch/ATTEMPT_ID``, which
the pool removes once the worker is gone however it ended (killed included), and at start
for workers that ended while no server was running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path

from tunery.backends.base import (
    AttemptLaunch,
    Handle,
    Placement,
    TierCapacity,
    WorkerState,
    node_slots,
    pool_default_tier,
    pool_serves,
)
from tunery.environment import ENV_PREFIX, child_environment

SCRATCH = "scratch"
WORKER_FILE = "worker"
"""In an attempt's scratch folder: the ``PID:START`` of the worker using it."""


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None if the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; fields after it start past the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited; only its exit status is left
        return None
    return fields[19]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


KIND = "local"


def local_handle(pid: int, started: str) -> Handle:
    return Handle(KIND, f"{pid}:{started}")


def process_of(handle: Handle) -> tuple[int, str]:
    """The (pid, start time) a local handle names."""
    pid, _, started = handle.ref.partition(":")
    return int(pid), started


class LocalBackend:
    """Workers as processes of this machine, one per configured node.

    ``nodes`` are ``(name, tier)`` pairs; ``data_dir`` is the server's: the run folders
    under it hold checkpoints and attempt logs, and its ``models/`` the catalog models the
    worker loads (the node is this machine).
    """

    kind = KIND

    def __init__(self, nodes: list[tuple[str, str]], data_dir: Path) -> None:
        self._nodes = nodes
        self._runs_dir = data_dir / "runs"
        self._data_dir = data_dir
        self._scratch_dir = data_dir / SCRATCH
        self._scratch_lock = threading.Lock()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.sweep_scratch()  # workers that ended while no server was running

    @property
    def default_tier(self) -> str | None:
        return pool_default_tier(self._nodes)

    def serves(self, tier: str) -> bool:
        return pool_serves(self._nodes, tier)

    def capacity(self, tier: str, busy: Collection[str]) -> TierCapacity:
        return node_slots(self._nodes, tier, busy)[0]

    def claim(self, tier: str, busy: Collection[str]) -> str | None:
        return node_slots(self._nodes, tier, busy)[1]

    def start(self, launch: AttemptLaunch) -> Handle:
        run_dir = self._runs_dir / launch.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        scratch = self._scratch_dir / launch.attempt_id
        env = child_environment(
            {f"{ENV_PREFIX}DATA_DIR": str(self._data_dir), "TMPDIR": str(scratch)}
        )
        with self._scratch_lock, (run_dir / f"attempt-{launch.number}.log").open("ab") as log:
            scratch.mkdir(parents=True, exist_ok=True)
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tunery.worker",
                    "--server",
                    launch.server_url,
                    "--attempt",
                    launch.attempt_id,
                    "--checkpoints",
                    str(self._runs_dir),
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            handle = local_handle(process.pid, process_start_time(process.pid) or "")
            # Recorded before the token goes out: a worker without its token does nothing,
            # so a scratch folder that names no worker is never in use.
            (scratch / WORKER_FILE).write_text(handle.ref)
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # the worker died already: it is reaped
            process.stdin.write(f"{launch.token}\n".encode())
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        self._children[process.pid] = process
        return handle

    def collect(self) -> None:
        """Wait for exited children so they do not linger as zombies, and remove the
        scratch folders of workers that are gone."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]
        self.sweep_scratch()

    def sweep_scratch(self) -> list[str]:
        """Remove the scratch folder of every worker that is gone (exited, killed, or never
        given its token); returns the attempt ids whose folders went."""
        removed = []
        with self._scratch_lock:
            folders = list(self._scratch_dir.iterdir()) if self._scratch_dir.is_dir() else []
            for folder in folders:
                try:
                    ref = (folder / WORKER_FILE).read_text()
                except OSError:
                    ref = ""
                if not ref or not self.alive(Handle(KIND, ref)):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
        return removed

    def placement(self, handle: Handle) -> Placement:
        """A local worker runs from its start (its node was claimed before) until it exits."""
        return Placement(WorkerState.RUNNING if self.alive(handle) else WorkerState.GONE)

    def alive(self, handle: Handle) -> bool:
        pid, expected = process_of(handle)
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            return False
        started = process_start_time(pid)
        return started is not None and started == expected

    def cancel(self, handle: Handle, *, grace_seconds: float) -> None:
        if not self.alive(handle):
            return
        pid, _ = process_of(handle)
        self._signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and self._group_alive(pid):
            self._reap(pid)
            time.sleep(0.05)
        if self._group_alive(pid):
            self._signal_group(pid, signal.SIGKILL)
        self._reap(pid, wait=True)
        self.sweep_scratch()

    def _reap(self, pid: int, *, wait: bool = False) -> None:
        child = self._children.get(pid)
        if child is None:
            return
        try:
            child.wait(timeout=5 if wait else 0)
        except subprocess.TimeoutExpired:
            return
        self._children.pop(pid, None)

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        return bool(group_members(pgid))
