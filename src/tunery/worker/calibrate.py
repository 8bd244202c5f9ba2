"""``python -m tunery.worker.calibrate``: the estimate's micro-benchmark, in a process of its
own on a node of the tier (``tunery.pipeline.calibration``).

Reads ``{"shape": {...}, "recipe": {...}, "example_tokens": N, "threads": T}`` as JSON on
stdin and writes the measurement as JSON on stdout, with ``import_seconds``: how long this
fresh process took to import the training stack, which every run's worker pays too.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import json  # noqa: E402 - the clock starts before any import
import sys  # noqa: E402


def main() -> int:
    request = json.load(sys.stdin)
    import peft  # noqa: F401 - timed with the rest of the training stack
    import torch
    import transformers  # noqa: F401

    from tunery.pipeline.calibration import calibrate
    from tunery.pipeline.config import parse_recipe

    imported = time.monotonic() - STARTED
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    result = calibrate(
        request["shape"], parse_recipe(request["recipe"]), example_tokens=request["example_tokens"]
    )
    json.dump({**result, "import_seconds": imported}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
