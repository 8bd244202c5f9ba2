"""Benchmarks measure each variant in a fresh interpreter (imports, caches and allocator
state start equal): this runs one such worker and reads its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def worker_result(script: str, worker: str, **options: str) -> Any:
    """Run ``python SCRIPT --worker WORKER --OPTION VALUE ...`` (option names with ``_``
    written with ``-``); its last stdout line, as JSON. Exits naming the worker, with the end
    of its stderr, when it fails."""
    command = [sys.executable, str(Path(script).resolve()), "--worker", worker]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", value]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"worker {worker} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
