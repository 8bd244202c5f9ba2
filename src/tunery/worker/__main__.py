"""A worker process: ``python -m tunery.worker --server URL --attempt ID [--checkpoints DIR]``.

Started by the local backend in its own process group; the control plane may kill the
group at any time (cancel), and a worker that dies is simply replaced by a new attempt
that resumes from the checkpoints under ``DIR/RUN_ID/`` (without ``--checkpoints``, from
those it uploaded to the server). The attempt's token is the first line of stdin (a pipe
the backend closes once written): never the command line, which every local user can read,
nor the environment, which ``/proc/PID/environ`` keeps showing for the process's life.
Everything else comes over the API (``tunery.worker.attempt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunery.worker.attempt import run_attempt


def read_token() -> str:
    return sys.stdin.readline().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunery.worker")
    parser.add_argument("--server", required=True)
    parser.add_argument("--attempt", required=True)
    parser.add_argument("--checkpoints", type=Path, default=None)
    args = parser.parse_args(argv)
    token = read_token()
    if not token:
        parser.error("no attempt token: write it to stdin")
    return run_attempt(
        server_url=args.server,
        attempt_id=args.attempt,
        token=token,
        checkpoint_root=args.checkpoints,
    )


if __name__ == "__main__":
    sys.exit(main())
