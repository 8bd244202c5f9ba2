"""A downloaded checkpoint archive is checked member by member before a byte is written."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from tunery.pipeline.checkpoints import complete_checkpoints
from tunery.worker.checkpoints import (
    CHECKPOINT_FILES,
    CheckpointDamaged,
    _step_header,
    extract_checkpoint,
)


def archive(
    path: Path, members: dict[str, bytes], *, deflate: frozenset[str] = frozenset()
) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, content in members.items():
            kind = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            bundle.writestr(zipfile.ZipInfo(name), content, compress_type=kind)
    return path


GOOD = {name: name.encode() * 10 for name in CHECKPOINT_FILES}


def test_a_good_archive_becomes_a_complete_checkpoint(tmp_path: Path) -> None:
    written = extract_checkpoint(archive(tmp_path / "a.zip", GOOD), tmp_path / "ckpt", 7)
    assert complete_checkpoints(tmp_path / "ckpt") == [written]
    assert written.name == "step-00000007"
    assert {path.name for path in written.iterdir()} == {*CHECKPOINT_FILES, "COMPLETE"}


@pytest.mark.parametrize(
    "members",
    [
        {**GOOD, "../escape.txt": b"x"},
        {**GOOD, "/etc/evil": b"x"},
        {**GOOD, "extra.bin": b"x"},
        {name: GOOD[name] for name in sorted(CHECKPOINT_FILES)[:2]},
        {},
    ],
    ids=["parent-path", "absolute-path", "unexpected-file", "missing-file", "empty"],
)
def test_an_archive_of_other_files_is_refused_before_anything_is_written(
    tmp_path: Path, members: dict[str, bytes]
) -> None:
    with pytest.raises(CheckpointDamaged, match="other files than a checkpoint"):
        extract_checkpoint(archive(tmp_path / "a.zip", members), tmp_path / "ckpt", 7)
    assert not (tmp_path / "ckpt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_a_symlink_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        for name in sorted(CHECKPOINT_FILES)[1:]:
            bundle.writestr(name, GOOD[name])
        link = zipfile.ZipInfo(sorted(CHECKPOINT_FILES)[0])
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    with pytest.raises(CheckpointDamaged, match="is no file"):
        extract_checkpoint(path, tmp_path / "ckpt", 7)
    assert not (tmp_path / "ckpt").exists()


def test_a_compressed_member_is_refused_so_sizes_cannot_lie(tmp_path: Path) -> None:
    bomb = archive(
        tmp_path / "a.zip",
        {**GOOD, "training_state.pt": b"\0" * 2**20},
        deflate=frozenset({"training_state.pt"}),
    )
    with pytest.raises(CheckpointDamaged, match="compressed"):
        extract_checkpoint(bomb, tmp_path / "ckpt", 7)


def test_an_encrypted_member_is_refused(tmp_path: Path) -> None:
    # zipfile writes no encrypted members: set the flag in the headers by hand.
    data = bytearray(archive(tmp_path / "plain.zip", GOOD).read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start != -1:
            data[start + flag_offset] |= 0x1
            start = data.find(signature, start + 4)
    path = tmp_path / "a.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamaged, match="encrypted"):
        extract_checkpoint(path, tmp_path / "ckpt", 7)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("content", [b"not a zip at all", b""], ids=["garbage", "empty-file"])
def test_a_file_that_is_no_archive_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "a.zip"
    path.write_bytes(content)
    with pytest.raises(CheckpointDamaged, match="damaged"):
        extract_checkpoint(path, tmp_path / "ckpt", 7)


def test_a_truncated_archive_is_refused(tmp_path: Path) -> None:
    path = archive(tmp_path / "a.zip", GOOD)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointDamaged):
        extract_checkpoint(path, tmp_path / "ckpt", 7)
    assert complete_checkpoints(tmp_path / "ckpt") == []


@pytest.mark.parametrize("value", ["", "abc", "0", "-3", "100000000", "5.5", "７"])
def test_a_step_header_that_is_not_a_step_is_refused(value: str) -> None:
    with pytest.raises(CheckpointDamaged, match="no valid checkpoint step"):
        _step_header(value)
