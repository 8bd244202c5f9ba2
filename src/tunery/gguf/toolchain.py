"""llama.cpp's converter and quantizer, at one pinned version.

The quantizer is the compiled llama.cpp inside ``llama-cpp-python`` (its
``llama_model_quantize`` is byte-identical to the ``llama-quantize`` tool). The converter,
``convert_hf_to_gguf.py`` with its ``conversion`` package and the matching ``gguf-py``, is not
in the installed wheel; it is taken from the source distribution of the same version on the
package registry, once, and kept in ``toolchain_root()``. ``TUNERY_LLAMA_CPP_DIR``
points at a local llama.cpp checkout instead. No llama.cpp code lives in this repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tunery.environment import environment
from tunery.errors import TuneryError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


class ToolchainError(TuneryError):
    """The converter or quantizer is missing or at the wrong version."""

    code = "gguf_toolchain"


def toolchain_root() -> Path:
    """A per-machine cache (``TUNERY_TOOLCHAIN_DIR``, default ``~/.cache/tunery/toolchain``)."""
    configured = environment().toolchain_dir
    if configured is not None:
        return configured
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tunery" / "toolchain"


def cached_converter_dir() -> Path:
    """Where the fetched converter is kept (``converter_dir`` uses it unless
    ``TUNERY_LLAMA_CPP_DIR`` names a checkout)."""
    return toolchain_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def converter_dir() -> Path:
    """Where convert_hf_to_gguf.py lives; fetched on first use unless already there."""
    local = environment().llama_cpp_dir
    if local is not None:
        if not (local / "convert_hf_to_gguf.py").is_file():
            raise ToolchainError(
                f"TUNERY_LLAMA_CPP_DIR={local} has no convert_hf_to_gguf.py",
                hint="point it at the root of a llama.cpp checkout",
            )
        return local
    directory = cached_converter_dir()
    if not all((directory / name).exists() for name in CONVERTER_FILES):
        fetch_converter(directory)
    return directory


def fetch_converter(directory: Path, sdist: Path | None = None) -> Path:
    """Keep the converter's files of the pinned source distribution in ``directory``:
    from ``sdist`` when given (the archive an install already downloaded), else downloaded."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".fetch-") as scratch:
        archive = sdist if sdist is not None else _download_sdist(Path(scratch))
        staging = Path(scratch) / "converter"
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
        wanted = tuple(prefix + name for name in CONVERTER_FILES)
        try:
            with tarfile.open(archive) as source:
                members = []
                for member in source.getmembers():
                    if member.name.startswith(wanted):
                        member.name = member.name[len(prefix) :]
                        members.append(member)
                # The "data" filter refuses absolute paths, links out of the folder and devices.
                source.extractall(staging, members=members, filter="data")
        except (OSError, tarfile.TarError) as error:
            raise ToolchainError(
                f"{archive} is not llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source "
                f"archive: {error}",
                hint="give the .tar.gz that `pip download --no-binary :all: "
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}` fetches",
            ) from None
        if not all((staging / name).exists() for name in CONVERTER_FILES):
            raise ToolchainError(
                f"{archive} holds no llama.cpp converter at version {LLAMA_CPP_PYTHON_VERSION}",
                hint=f"use llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source archive",
            )
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    return directory


def _download_sdist(scratch: Path) -> Path:
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(scratch),
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    archives = list(scratch.glob("llama_cpp_python-*.tar.gz"))
    if download.returncode != 0 or not archives:
        raise ToolchainError(
            f"could not download llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source "
            f"for its GGUF converter: {download.stderr.strip()[-400:]}",
            hint="run `tunery gguf-toolchain` once with access to the package registry, "
            "or set TUNERY_LLAMA_CPP_DIR to a llama.cpp checkout",
        )
    return archives[0]


def require_llama_cpp() -> None:
    """Fail clearly when llama-cpp-python is missing or not the pinned version."""
    try:
        import llama_cpp
    except ImportError:
        raise ToolchainError(
            "GGUF export needs llama-cpp-python, which is not installed",
            hint=f"pip install llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} "
            "(it compiles llama.cpp: about 10 minutes)",
        ) from None
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
        raise ToolchainError(
            f"llama-cpp-python {llama_cpp.__version__} is installed; tunery's converter is "
            f"pinned to {LLAMA_CPP_PYTHON_VERSION} and the two must agree",
            hint=f"pip install llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
        )
