"""A worker's transfers with the server: its spec, its run's datasets, files it uploads.

Every transfer retries while the server is unreachable (it may be restarting) and stops at
once when the server no longer accepts the attempt (``Fenced``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tunery.errors import TuneryError
from tunery.wire.reports import AttemptSpec, DatasetRef

SPEC_DEADLINE_SECONDS = 300
TRANSFER_DEADLINE_SECONDS = 600.0


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


def check_response(response: httpx.Response, what: str) -> None:
    if response.status_code in (404, 409):
        raise Fenced(what)
    if response.status_code >= 500:
        raise Unreachable(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        raise TransferFailed(f"{what} failed: HTTP {response.status_code} {response.text[:300]}")


def with_retries(action: Callable[[], None], what: str) -> None:
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
                check_response(response, f"downloading dataset {dataset.id}")
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    file.write(chunk)
            if digest.hexdigest() != dataset.sha256:
                raise TransferFailed(f"dataset {dataset.id} arrived damaged (sha256 differs)")

        with_retries(download, f"downloading dataset {dataset.id}")
        paths.append(target)
    return paths


def upload_file(client: httpx.Client, url: str, path: Path, what: str) -> None:
    """PUT ``path`` to ``url`` with its sha256; retried on network errors."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(2**20):
            digest.update(chunk)

    def upload() -> None:
        with path.open("rb") as file:
            response = client.put(
                url,
                content=file,
                headers={
                    "Content-Type": "application/zip",
                    "Content-Length": str(path.stat().st_size),
                    "X-Content-SHA256": digest.hexdigest(),
                },
                timeout=(30, 30, 600, 30),  # connect, read, write, pool: a big upload writes long
            )
        check_response(response, what)

    with_retries(upload, what)


def upload_bundle(client: httpx.Client, attempt_id: str, kind: str, path: Path) -> None:
    """PUT a bundle; the server names and files it."""
    upload_file(
        client,
        f"/internal/attempts/{attempt_id}/bundles/{kind}",
        path,
        f"uploading the {kind} bundle",
    )
