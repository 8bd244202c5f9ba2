"""The GGUF converter taken from llama-cpp-python's source archive an install already has."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tunery.gguf.toolchain import LLAMA_CPP_PYTHON_VERSION, ToolchainError, fetch_converter

PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"


def archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_converter_comes_from_the_given_archive_and_nothing_else(tmp_path: Path) -> None:
    sdist = archive(
        tmp_path / "sdist.tar.gz",
        {
            PREFIX + "convert_hf_to_gguf.py": b"# converter\n",
            PREFIX + "conversion/__init__.py": b"",
            PREFIX + "gguf-py/gguf/__init__.py": b"",
            PREFIX + "src/llama.cpp": b"// not the converter\n",
        },
    )
    target = fetch_converter(tmp_path / "toolchain" / "llama.cpp", sdist)
    assert (target / "convert_hf_to_gguf.py").read_bytes() == b"# converter\n"
    assert sorted(p.name for p in target.iterdir()) == [
        "conversion",
        "convert_hf_to_gguf.py",
        "gguf-py",
    ]


def test_an_archive_without_the_converter_or_no_archive_at_all_is_refused(tmp_path: Path) -> None:
    other = archive(tmp_path / "other.tar.gz", {"something-else/setup.py": b""})
    with pytest.raises(ToolchainError, match=r"holds no llama\.cpp converter"):
        fetch_converter(tmp_path / "a" / "llama.cpp", other)
    text = tmp_path / "notes.tar.gz"
    text.write_text("not an archive")
    with pytest.raises(ToolchainError, match="is not llama-cpp-python"):
        fetch_converter(tmp_path / "b" / "llama.cpp", text)
    assert (
        not (tmp_path / "a" / "llama.cpp").exists() and not (tmp_path / "b" / "llama.cpp").exists()
    )


def test_members_that_would_leave_the_folder_are_refused(tmp_path: Path) -> None:
    sdist = archive(
        tmp_path / "evil.tar.gz",
        {PREFIX + "convert_hf_to_gguf.py/../../../../escaped.py": b"x"},
    )
    with pytest.raises(ToolchainError):
        fetch_converter(tmp_path / "c" / "llama.cpp", sdist)
    assert not list(tmp_path.rglob("escaped.py"))
