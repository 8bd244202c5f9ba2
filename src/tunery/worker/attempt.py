"""One attempt, start to end: spec, datasets, recipe, bundles, reports. Backend-neutral.

``run_attempt`` is what every backend runs: the local pool in a process of its own
(``python -m tunery.worker``), Ray inside an actor. On a tier of several devices it starts
one process per device on its node and speaks for them (``pipeline.ranks``): one rank that
dies ends them all, and the attempt fails as transient, so the run retries. It needs nothing
from the server's disk: the spec names the run's datasets (and the adapter it starts from,
``init_from``), which it downloads with its attempt token; it trains in a scratch directory
of its own; it uploads its bundles, and the server files them under
names it chooses. Checkpoints go where a later attempt on another node finds them: into
``checkpoint_root`` when every node of the tier reaches one (the data dir's run folders for
the local pool, a shared path for a cluster), else through the server
(``tunery.worker.checkpoints``).
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import httpx

from tunery.environment import environment
from tunery.errors import ConfigError, RunCancelled, RunPaused, TuneryError
from tunery.phases import Phase
from tunery.pipeline.card_fit import TrainingOutOfMemory
from tunery.wire.reports import (
    ATTEMPT_TOKEN_HEADER,
    MAX_WORKER_FILE_BYTES,
    AnyReport,
    FailureData,
    FailureReport,
    PausedData,
    PausedReport,
    ResultData,
    ResultReport,
)
from tunery.worker.checkpoints import fetch_newest_checkpoint, upload_checkpoint
from tunery.worker.init_adapter import fetch_init_adapter
from tunery.worker.reporting import HttpReporter
from tunery.worker.transfers import (
    Fenced,
    download_datasets,
    fetch_spec,
    upload_bundle,
)

BASE_ANSWERS_CACHE = ".cache/base-responses"
"""Under the checkpoint root, which every node of a tier reaches: the base model's sample
answers, so runs on the same base model and prompts generate them once."""


def out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def failure(error: Exception) -> FailureReport:
    """The report for an exception the pipeline did not turn into a TuneryError."""
    if out_of_memory(error):
        data = FailureData(
            code=TrainingOutOfMemory.code,
            message="the model ran out of memory at this batch size",
            hint="lower training.batch_size or max_seq_length, or turn on gradient_checkpointing",
        )
    else:
        data = FailureData(
            code="internal_error",
            message=f"{type(error).__name__}: {error}",
            hint="the worker's log on its node has the traceback",
        )
    return FailureReport(data=data)


def run_attempt(
    *, server_url: str, attempt_id: str, token: str, checkpoint_root: Path | None
) -> int:
    """Run one attempt to its end and report it; returns the process exit status (0).

    ``checkpoint_root``: a directory every node of the tier reaches; None keeps checkpoints
    through the server.
    """
    client = httpx.Client(base_url=server_url, timeout=30, headers={ATTEMPT_TOKEN_HEADER: token})
    spec = fetch_spec(client, attempt_id)
    if spec is None:
        return 0
    reporter = HttpReporter(client, attempt_id, token, heartbeat_seconds=spec.heartbeat_seconds)
    reporter.start()
    reporter.phase(Phase.LOADING_MODEL)

    # After the first heartbeat: importing torch takes seconds.
    from tunery.pipeline.config import parse_recipe
    from tunery.pipeline.ranks import run_recipe_on_ranks
    from tunery.pipeline.wandb_log import with_wandb

    final: AnyReport
    with tempfile.TemporaryDirectory(prefix=f"tunery-{attempt_id}-") as scratch:
        try:
            data = Path(scratch) / "data"
            paths = download_datasets(client, attempt_id, spec.datasets, data)
            held_out = download_datasets(client, attempt_id, spec.validation_datasets, data)
            if checkpoint_root is None:
                checkpoint_dir, base_cache_dir = Path(scratch) / "checkpoints", None
                step = fetch_newest_checkpoint(
                    client, attempt_id, checkpoint_dir, max_bytes=MAX_WORKER_FILE_BYTES
                )
                if step is not None:
                    reporter.log(f"fetched the checkpoint at step {step} from the server")
                keep_checkpoint = partial(upload_checkpoint, client, attempt_id)
            else:
                checkpoint_dir = checkpoint_root / spec.run_id / "checkpoints"
                base_cache_dir = checkpoint_root / BASE_ANSWERS_CACHE
                keep_checkpoint = None
            recipe = parse_recipe(spec.recipe)
            init_adapter_dir = None
            if recipe.init_from is not None:
                if spec.init_adapter is None:
                    raise ConfigError.single(
                        "init_from",
                        f"the adapter of {recipe.init_from} is no longer on the server (its "
                        "Hub entry was deleted)",
                    )
                init_adapter_dir = fetch_init_adapter(
                    client, attempt_id, spec.init_adapter, Path(scratch) / "init-adapter"
                )
            logged = None
            if spec.wandb:
                # The server's W&B access, for this process only (never its command line).
                os.environ.update(
                    {f"WANDB_{key.upper()}": value for key, value in spec.wandb.items()}
                )
                folder = Path(spec.wandb.get("dir") or Path(scratch) / "wandb")
                logged = with_wandb(recipe, reporter, run_id=spec.run_id, folder=folder)
            try:
                result = run_recipe_on_ranks(
                    recipe,
                    Path(scratch) / "out",
                    logged or reporter,
                    processes=spec.devices,
                    threads=spec.threads or environment().torch_threads,
                    dataset_paths=paths,
                    validation_paths=held_out,
                    checkpoint_dir=checkpoint_dir,
                    base_cache_dir=base_cache_dir,
                    on_checkpoint=keep_checkpoint,
                    estimate=spec.estimate,
                    init_adapter_dir=init_adapter_dir,
                )
            finally:
                if logged is not None:
                    logged.close()
            uploading = time.monotonic()
            upload_bundle(client, attempt_id, "lora", result.lora_bundle)
            if result.gguf_bundle is not None:
                upload_bundle(client, attempt_id, "gguf", result.gguf_bundle)
            # Billed too (the attempt ends with its result): timed like the pipeline's phases.
            result.summary["timings"]["uploading"] = round(time.monotonic() - uploading, 3)
            final = ResultReport(data=ResultData.model_validate(result.summary))
        except (RunCancelled, Fenced):
            return 0  # the control plane already moved the run; nothing more to say
        except RunPaused as paused:
            final = PausedReport(data=PausedData(step=paused.step))
        except TuneryError as error:
            final = FailureReport(data=FailureData(**error.as_dict(), transient=error.transient))
        except Exception as error:
            traceback.print_exc()
            final = failure(error)
    reporter.finish(final)
    return 0
