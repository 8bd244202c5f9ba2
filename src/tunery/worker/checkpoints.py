"""Checkpoints through the server, for a cluster whose nodes share no disk.

Without a shared checkpoint directory a worker trains with its checkpoints in its own
scratch space, uploads each complete one to the server as an archive, and, starting, puts
the run's newest archive where the training loop resumes from. An archive holds exactly the
files of one checkpoint (``pipeline.checkpoints``), stored uncompressed, so its members'
sizes are its own; a downloaded archive is checked member by member before anything is
written, and the checkpoint is written as the loop writes its own: a staging directory,
renamed, the marker last.
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

import httpx

from tunery.errors import TuneryError
from tunery.pipeline.checkpoints import COMPLETE_MARKER
from tunery.worker.transfers import check_response, upload_file, with_retries

CHECKPOINT_FILES = frozenset({"adapter.safetensors", "training_state.pt", "trainer_state.json"})
STEP_DIRECTORY = re.compile(r"step-([0-9]{8})")
STEP_HEADER = re.compile(r"[0-9]{1,8}")


class CheckpointDamaged(TuneryError):
    """The run's newest checkpoint archive is not one: the same archive fails again."""

    code = "checkpoint_damaged"


def upload_checkpoint(client: httpx.Client, attempt_id: str, checkpoint: Path) -> None:
    """Archive the complete checkpoint directory ``checkpoint`` (``step-NNNNNNNN``) and PUT it."""
    match = STEP_DIRECTORY.fullmatch(checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint} is not a checkpoint directory")
    step = int(match[1])
    with tempfile.TemporaryDirectory(prefix="tunery-checkpoint-") as scratch:
        archive = Path(scratch) / "checkpoint.zip"
        # Stored, not deflated: tensors hardly compress, and sizes stay what they say.
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
            for name in sorted(CHECKPOINT_FILES):
                bundle.write(checkpoint / name, arcname=name)
        upload_file(
            client,
            f"/internal/attempts/{attempt_id}/checkpoints/{step}",
            archive,
            f"uploading the checkpoint at step {step}",
        )


def fetch_newest_checkpoint(
    client: httpx.Client, attempt_id: str, checkpoint_dir: Path, *, max_bytes: int
) -> int | None:
    """Put the run's newest checkpoint into ``checkpoint_dir``; its step, or None when the
    run has none. Raises CheckpointDamaged when the archive is not a checkpoint, or is
    larger than ``max_bytes``."""
    with tempfile.TemporaryDirectory(prefix="tunery-checkpoint-") as scratch:
        archive = Path(scratch) / "checkpoint.zip"
        step: int | None = None

        def download() -> None:
            nonlocal step
            url = f"/internal/attempts/{attempt_id}/checkpoints/newest"
            with client.stream("GET", url) as response, archive.open("wb") as file:
                check_response(response, "downloading the newest checkpoint")
                if response.status_code == 204:
                    step = None
                    return
                step = _step_header(response.headers.get("X-Checkpoint-Step", ""))
                written = 0
                for chunk in response.iter_bytes():
                    written += len(chunk)
                    if written > max_bytes:
                        raise CheckpointDamaged(
                            f"the newest checkpoint archive is over {max_bytes} bytes"
                        )
                    file.write(chunk)

        with_retries(download, "downloading the newest checkpoint")
        if step is None:
            return None
        extract_checkpoint(archive, checkpoint_dir, step)
        return step


def _step_header(value: str) -> int:
    if STEP_HEADER.fullmatch(value) is None or int(value) < 1:
        raise CheckpointDamaged(f"the server named no valid checkpoint step ({value[:20]!r})")
    return int(value)


def extract_checkpoint(archive: Path, checkpoint_dir: Path, step: int) -> Path:
    """Write the checkpoint in ``archive`` as ``checkpoint_dir/step-NNNNNNNN``, complete.

    Every member must be one of CHECKPOINT_FILES, a regular file, stored uncompressed, and
    each must be there; anything else raises CheckpointDamaged before a byte is written.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            _check_members(members)
            final = checkpoint_dir / f"step-{step:08d}"
            staging = checkpoint_dir / f".tmp-step-{step:08d}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for member in members:
                with bundle.open(member) as source, (staging / member.filename).open("wb") as out:
                    shutil.copyfileobj(source, out, 2**20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise CheckpointDamaged(f"the newest checkpoint archive is damaged: {error}") from None
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    (final / COMPLETE_MARKER).write_text("ok\n")
    return final


def _check_members(members: list[zipfile.ZipInfo]) -> None:
    names = [member.filename for member in members]
    if sorted(names) != sorted(CHECKPOINT_FILES):
        unexpected = sorted(set(names) - CHECKPOINT_FILES)[:3]
        missing = sorted(CHECKPOINT_FILES - set(names))
        raise CheckpointDamaged(
            "the newest checkpoint archive holds other files than a checkpoint's "
            f"(unexpected {unexpected}, missing {missing}, {len(names)} members)"
        )
    for member in members:
        kind = stat.S_IFMT(member.external_attr >> 16)
        if member.is_dir() or kind not in (0, stat.S_IFREG):
            raise CheckpointDamaged(f"{member.filename!r} in the checkpoint archive is no file")
        if member.compress_type != zipfile.ZIP_STORED:
            raise CheckpointDamaged(f"{member.filename!r} in the checkpoint archive is compressed")
        if member.flag_bits & 0x1:
            raise CheckpointDamaged(f"{member.filename!r} in the checkpoint archive is encrypted")
