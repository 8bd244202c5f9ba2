"""The adapter a run starts from (``init_from``): downloaded, checked, unpacked.

The server answers ``GET /internal/attempts/{id}/init-adapter`` with the LoRA bundle of the
run the recipe names, or with a redirect to its store's presigned URL, which is fetched
without the attempt's token (a store is not the control plane). The bundle must be exactly
the size and SHA-256 the spec announced; only the two files PEFT needs are taken from it,
each a regular, unencrypted member of a bounded size, written under names fixed here, never
under a name from the archive.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from pathlib import Path

import httpx

from tunery.errors import TuneryError
from tunery.pipeline.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tunery.wire.reports import AdapterRef
from tunery.worker.transfers import TransferFailed, check_response, with_retries

ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
REDIRECTS = (301, 302, 303, 307, 308)
UNPACK_RATIO = 16
"""How many times its bundle's size an adapter file may unpack to: trained weights hardly
compress, so more is an archive built to fill the disk."""


class AdapterDamaged(TuneryError):
    """The bundle of the ``init_from`` run is not a LoRA bundle: the same file fails again."""

    code = "init_adapter_damaged"


def fetch_init_adapter(
    client: httpx.Client, attempt_id: str, adapter: AdapterRef, into: Path
) -> Path:
    """Download and unpack the adapter ``adapter`` names; returns its directory under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "bundle.zip"

    def download() -> None:
        url = f"/internal/attempts/{attempt_id}/init-adapter"
        with client.stream("GET", url) as response:
            if response.status_code in REDIRECTS and "location" in response.headers:
                # The store's own URL: fetched without the attempt's token.
                with (
                    httpx.Client(timeout=client.timeout) as store,
                    store.stream("GET", response.headers["location"]) as stored,
                ):
                    check_response(stored, f"downloading the adapter of {adapter.run_id}")
                    _write(stored, archive, adapter)
                return
            check_response(response, f"downloading the adapter of {adapter.run_id}")
            _write(response, archive, adapter)

    with_retries(download, f"downloading the adapter of {adapter.run_id}")
    directory = into / "adapter"
    unpack_adapter(archive, directory, max_bytes=adapter.bytes)
    archive.unlink()
    return directory


def _write(response: httpx.Response, archive: Path, adapter: AdapterRef) -> None:
    digest = hashlib.sha256()
    written = 0
    with archive.open("wb") as file:
        for chunk in response.iter_bytes():
            written += len(chunk)
            if written > adapter.bytes:
                raise TransferFailed(
                    f"the adapter of {adapter.run_id} is larger than announced ({adapter.bytes} "
                    "bytes)"
                )
            digest.update(chunk)
            file.write(chunk)
    if written != adapter.bytes or digest.hexdigest() != adapter.sha256:
        raise TransferFailed(f"the adapter of {adapter.run_id} arrived damaged (sha256 differs)")


def unpack_adapter(archive: Path, directory: Path, *, max_bytes: int) -> None:
    """Write ``ADAPTER_FILES`` from the LoRA bundle ``archive`` into ``directory``.

    Each must be a regular, unencrypted member that unpacks to at most ``UNPACK_RATIO``
    times the bundle's size (``max_bytes``, plus a mebibyte for the small config); else
    AdapterDamaged before anything is written. zipfile itself never yields more than a
    member's stated size and checks its CRC at the end.
    """
    limit = max_bytes * UNPACK_RATIO + 2**20
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = {member.filename: member for member in bundle.infolist()}
            missing = [name for name in ADAPTER_FILES if name not in members]
            if missing:
                raise AdapterDamaged(f"the adapter bundle has no {', '.join(missing)}")
            for name in ADAPTER_FILES:
                _check_member(members[name], limit)
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            for name in ADAPTER_FILES:
                with bundle.open(members[name]) as source, (directory / name).open("wb") as out:
                    shutil.copyfileobj(source, out, 2**20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise AdapterDamaged(f"the adapter bundle is damaged: {error}") from None


def _check_member(member: zipfile.ZipInfo, limit: int) -> None:
    kind = stat.S_IFMT(member.external_attr >> 16)
    if member.is_dir() or kind not in (0, stat.S_IFREG):
        raise AdapterDamaged(f"{member.filename!r} in the adapter bundle is no file")
    if member.flag_bits & 0x1:
        raise AdapterDamaged(f"{member.filename!r} in the adapter bundle is encrypted")
    if member.file_size > limit:
        raise AdapterDamaged(
            f"{member.filename!r} in the adapter bundle unpacks to {member.file_size} bytes, "
            f"more than {limit}"
        )
