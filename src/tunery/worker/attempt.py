"""One attempt, start to end: spec, datasets, recipe, bundles, reports. Backend-neutral.

``run_attempt`` is what every backend runs: the local pool in a process of its own
(``python -m tunery.worker``), Ray inside an actor. It needs nothing from the server's disk:
the spec names the run's datasets, which it downloads with its attempt token; it trains in
a scratch directory of its own; it uploads its bundles, and the server files them under
names it chooses. Only checkpoints leave the node another way: into ``checkpoint_root``,
which every node of the tier reaches (the data dir's run folders for the local pool, a
shared path for a cluster), so a later attempt on another node resumes from them.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import httpx

from tunery.environment import environment
from tunery.errors import RunCancelled, TuneryError
from tunery.phases import Phase
from tunery.wire.reports import (
    AnyReport,
    AttemptSpec,
    DatasetRef,
    FailureData,
    FailureReport,
    ResultData,
    ResultReport,
)
from tunery.worker.reporting import HttpReporter

SPEC_DEADLINE_SECONDS = 300
BASE_ANSWERS_CACHE = ".cache/base-responses"
"""Under the checkpoint root, which every node of a tier reaches: the base model's sample
answers, so runs on the same base model and prompts generate them once."""
TRANSFER_DEADLINE_SECONDS = 600.0
TOKEN_HEADER = "X-Attempt-Token"


class Fenced(Exception):
    """The server no longer accepts this attempt (cancelled, or replaced)."""


class TransferFailed(TuneryError):
    code = "transfer_failed"
    transient = True


def fetch_spec(client: httpx.Client, attempt_id: str) -> AttemptSpec | None:
    """The attempt's spec; retries while the server is unreachable, None if fenced."""
    deadline = time.monotonic() + SPEC_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        try:
            response = client.get(f"/internal/attempts/{attempt_id}/spec")
        except httpx.HTTPError:
            time.sleep(1.0)
            continue
        if response.status_code in (404, 409):
            return None
        response.raise_for_status()
        return AttemptSpec.model_validate(response.json())
    return None


class Unreachable(Exception):
    """The server did not answer, or answered 5xx: worth trying again."""


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code in (404, 409):
        raise Fenced(what)
    if response.status_code >= 500:
        raise Unreachable(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        raise TransferFailed(f"{what} failed: HTTP {response.status_code} {response.text[:300]}")


def _with_retries(action: Callable[[], None], what: str) -> None:
    """``action()`` until it succeeds, retrying while the server is unreachable (it may be
    restarting) for up to ``TRANSFER_DEADLINE_SECONDS``, as reports are."""
    deadline = time.monotonic() + TRANSFER_DEADLINE_SECONDS
    delay = 0.5
    while True:
        try:
            action()
            return
        except (httpx.HTTPError, Unreachable) as error:
            if time.monotonic() > deadline:
                raise TransferFailed(f"{what} failed: {error}") from None
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def download_datasets(
    client: httpx.Client, attempt_id: str, datasets: list[DatasetRef], into: Path
) -> list[Path]:
    """The run's dataset files, in recipe order, checked against their sha256."""
    into.mkdir(parents=True, exist_ok=True)
    paths = []
    for dataset in datasets:
        target = into / f"{dataset.id}{dataset.suffix}"

        def download(dataset: DatasetRef = dataset, target: Path = target) -> None:
            digest = hashlib.sha256()
            url = f"/internal/attempts/{attempt_id}/datasets/{dataset.id}"
            with client.stream("GET", url) as response, target.open("wb") as file:
                _check(response, f"downloading dataset {dataset.id}")
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    file.write(chunk)
            if digest.hexdigest() != dataset.sha256:
                raise TransferFailed(f"dataset {dataset.id} arrived damaged (sha256 differs)")

        _with_retries(download, f"downloading dataset {dataset.id}")
        paths.append(target)
    return paths


def upload_bundle(client: httpx.Client, attempt_id: str, kind: str, path: Path) -> None:
    """PUT a bundle; the server names and files it. Retried on network errors."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(2**20):
            digest.update(chunk)

    def upload() -> None:
        with path.open("rb") as file:
            response = client.put(
                f"/internal/attempts/{attempt_id}/bundles/{kind}",
                content=file,
                headers={
                    "Content-Type": "application/zip",
                    "Content-Length": str(path.stat().st_size),
                    "X-Content-SHA256": digest.hexdigest(),
                },
                timeout=httpx.Timeout(30, write=600),
            )
        _check(response, f"uploading the {kind} bundle")

    _with_retries(upload, f"uploading the {kind} bundle")


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
            hint="the worker's log on its node has the traceback",
        )
    return FailureReport(data=data)


def run_attempt(*, server_url: str, attempt_id: str, token: str, checkpoint_root: Path) -> int:
    """Run one attempt to its end and report it; returns the process exit status (0)."""
    client = httpx.Client(base_url=server_url, timeout=30, headers={TOKEN_HEADER: token})
    spec = fetch_spec(client, attempt_id)
    if spec is None:
        return 0
    reporter = HttpReporter(client, attempt_id, token, heartbeat_seconds=spec.heartbeat_seconds)
    reporter.start()
    reporter.phase(Phase.LOADING_MODEL)

    import torch  # after the first heartbeat: importing torch takes seconds

    from tunery.pipeline.config import parse_recipe
    from tunery.pipeline.recipe import run_recipe

    threads = spec.threads or environment().torch_threads
    if threads:
        torch.set_num_threads(threads)
    final: AnyReport
    with tempfile.TemporaryDirectory(prefix=f"tunery-{attempt_id}-") as scratch:
        try:
            data = Path(scratch) / "data"
            paths = download_datasets(client, attempt_id, spec.datasets, data)
            held_out = download_datasets(client, attempt_id, spec.validation_datasets, data)
            result = run_recipe(
                parse_recipe(spec.recipe),
                Path(scratch) / "out",
                reporter,
                dataset_paths=paths,
                validation_paths=held_out,
                checkpoint_dir=checkpoint_root / spec.run_id / "checkpoints",
                base_cache_dir=checkpoint_root / BASE_ANSWERS_CACHE,
            )
            upload_bundle(client, attempt_id, "lora", result.lora_bundle)
            if result.gguf_bundle is not None:
                upload_bundle(client, attempt_id, "gguf", result.gguf_bundle)
            final = ResultReport(data=ResultData.model_validate(result.summary))
        except (RunCancelled, Fenced):
            return 0  # the control plane already moved the run; nothing more to say
        except TuneryError as error:
            final = FailureReport(data=FailureData(**error.as_dict(), transient=error.transient))
        except Exception as error:
            traceback.print_exc()
            final = failure(error)
    reporter.finish(final)
    return 0
