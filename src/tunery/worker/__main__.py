"""A worker: fetch the attempt's spec, run the recipe, report, exit.

``python -m tunery.worker --server URL --attempt ID --token TOKEN``. Started by a backend in
its own process group; the control plane may kill the group at any time (cancel), and a
worker that dies is simply replaced by a new attempt that resumes from the checkpoints in
the run's folder. Everything else it needs (recipe, threads, where catalog models live)
comes from its spec, never from the environment the server happened to have.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import httpx

from tunery.errors import RunCancelled, TuneryError
from tunery.phases import Phase
from tunery.wire.reports import (
    AnyReport,
    AttemptSpec,
    FailureData,
    FailureReport,
    ResultData,
    ResultReport,
)
from tunery.worker.reporting import HttpReporter

SPEC_DEADLINE_SECONDS = 300


def fetch_spec(client: httpx.Client, attempt_id: str, token: str) -> AttemptSpec | None:
    """The attempt's spec; retries while the server is unreachable, None if fenced."""
    deadline = time.monotonic() + SPEC_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        try:
            response = client.get(
                f"/internal/attempts/{attempt_id}/spec", headers={"X-Attempt-Token": token}
            )
        except httpx.HTTPError:
            time.sleep(1.0)
            continue
        if response.status_code in (404, 409):
            return None
        response.raise_for_status()
        return AttemptSpec.model_validate(response.json())
    return None


def out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def failure(error: Exception) -> FailureReport:
    """The report for an exception the pipeline did not turn into a TuneryError."""
    if out_of_memory(error):
        data = FailureData(
            code="out_of_memory",
            message="the model ran out of memory at this batch size",
            hint="lower training.batch_size or max_seq_length, or turn on gradient_checkpointing",
        )
    else:
        data = FailureData(
            code="internal_error",
            message=f"{type(error).__name__}: {error}",
            hint="the attempt log in the run folder has the traceback",
        )
    return FailureReport(data=data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunery.worker")
    parser.add_argument("--server", required=True)
    parser.add_argument("--attempt", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args(argv)

    client = httpx.Client(base_url=args.server, timeout=30)
    spec = fetch_spec(client, args.attempt, args.token)
    if spec is None:
        return 0
    # The pipeline finds catalog models (the demo model) under TUNERY_DATA_DIR: this
    # process's own copy is set from the spec, so it is the server's data dir whatever
    # environment the worker was started with.
    os.environ["TUNERY_DATA_DIR"] = spec.data_dir
    reporter = HttpReporter(
        client, args.attempt, args.token, heartbeat_seconds=spec.heartbeat_seconds
    )
    reporter.start()
    reporter.phase(Phase.LOADING_MODEL)

    import torch  # after the first heartbeat: importing torch takes seconds

    from tunery.pipeline.config import parse_recipe
    from tunery.pipeline.recipe import run_recipe

    if spec.threads:
        torch.set_num_threads(spec.threads)
    final: AnyReport
    try:
        result = run_recipe(parse_recipe(spec.recipe), Path(spec.out_dir), reporter)
        final = ResultReport(data=ResultData.model_validate(result.summary))
    except RunCancelled:
        return 0  # the control plane already moved the run; nothing more to say
    except TuneryError as error:
        final = FailureReport(data=FailureData(**error.as_dict(), transient=error.transient))
    except Exception as error:
        traceback.print_exc()
        final = failure(error)
    reporter.finish(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
