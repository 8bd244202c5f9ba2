"""Loading base models: Hub ids and URLs through the real HF cache (offline), templates, precision.

Hugging Face cannot be reached here, so the Hub tests lay the demo model out in a Hugging
Face cache exactly as a download would (``models--ORG--NAME/snapshots/COMMIT`` plus a ref)
and run the real loading code with ``HF_HUB_OFFLINE=1`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tunery.errors import ModelLoadError
from tunery.pipeline.load import load_tokenizer
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(hf_home: Path, repo_id: str, model_dir: Path, revision: str = "main") -> Path:
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(COMMIT)
    return snapshot


def resolve_offline(hf_home: Path, reference: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import sys\n"
        "from tunery.errors import TuneryError\n"
        "from tunery.pipeline.load import parse_model_reference, resolve_model_dir\n"
        "try:\n"
        f"    print(resolve_model_dir(parse_model_reference({reference!r})))\n"
        "except TuneryError as error:\n"
        "    print(type(error).__name__, error.message, error.hint, sep='|')\n"
        "    sys.exit(1)\n"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )


def test_hub_id_resolves_from_the_cache_offline(demo_model_dir, tmp_path):
    snapshot = cache_model(tmp_path / "hf", "tunery-test/tiny-llama", demo_model_dir)
    result = resolve_offline(tmp_path / "hf", "tunery-test/tiny-llama")
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip()) == snapshot


def test_hub_url_with_revision_resolves_that_revision(demo_model_dir, tmp_path):
    snapshot = cache_model(tmp_path / "hf", "tunery-test/tiny-llama", demo_model_dir, revision="v1")
    result = resolve_offline(
        tmp_path / "hf", "https://huggingface.co/tunery-test/tiny-llama/tree/v1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip()) == snapshot


def test_model_missing_from_the_cache_offline_is_a_clear_error(tmp_path):
    result = resolve_offline(tmp_path / "hf", "tunery-test/not-cached")
    assert result.returncode == 1
    kind, message, hint = result.stdout.strip().split("|")
    assert kind == "ModelLoadError"
    assert "tunery-test/not-cached" in message and "HF_HUB_OFFLINE" in message
    assert "unset HF_HUB_OFFLINE" in hint


@pytest.mark.slow
def test_train_on_a_hub_model_names_it_in_the_adapter(demo_model_dir, demo_dataset, tmp_path):
    cache_model(tmp_path / "hf", "tunery-test/tiny-llama", demo_model_dir)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "hub-run",
                "base_model": "tunery-test/tiny-llama",
                "datasets": [str(demo_dataset)],
                "training": {"max_steps": 2, "gradient_checkpointing": False},
                "export": {"gguf": False},
                "samples": {"max_new_tokens": 4},
            }
        )
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tunery.cli", "train", str(recipe), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "o" / "hub-run-lora.zip") as bundle:
        config = json.loads(bundle.read("adapter_config.json"))
    assert config["base_model_name_or_path"] == "tunery-test/tiny-llama"


def test_template_that_escapes_the_sandbox_is_refused(demo_model_dir, tmp_path):
    hostile = tmp_path / "hostile"
    shutil.copytree(demo_model_dir, hostile)
    (hostile / "chat_template.jinja").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}"
        "{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(ModelLoadError) as caught:
        load_tokenizer(hostile)
    assert "chat template" in caught.value.message


def test_gradient_checkpointing_and_bf16_autocast_train_on_cpu(data_dir, make_recipe, tmp_path):
    reporter = RecordingReporter()
    run_recipe(
        make_recipe(
            training={"max_steps": 2, "gradient_checkpointing": True, "mixed_precision": "bf16"}
        ),
        tmp_path / "out",
        reporter,
    )
    assert len(reporter.steps) == 2
    assert all(torch.isfinite(torch.tensor(step.loss)) for step in reporter.steps)
