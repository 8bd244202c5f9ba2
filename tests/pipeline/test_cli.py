"""``tunery train`` and ``tunery demo-model`` as a user runs them, in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tunery.backends.local import group_members

TUNERY = [sys.executable, "-m", "tunery.cli"]


def write_recipe(path: Path, dataset: Path, **training) -> Path:
    recipe = {
        "name": "cli-run",
        "base_model": "tunery/demo-tiny",
        "datasets": [str(dataset)],
        "training": {
            "max_steps": 6,
            "learning_rate": 2e-3,
            "gradient_checkpointing": False,
            **training,
        },
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 8},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNERY_DATA_DIR": str(data_dir)}
    return subprocess.run([*TUNERY, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_train_writes_the_bundle_and_reports(data_dir, demo_dataset, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", demo_dataset)
    result = run(["train", str(recipe), "--out", str(tmp_path / "out")], data_dir)
    assert result.returncode == 0, result.stderr
    assert "trained 6 steps" in result.stdout
    assert "sample 1:" in result.stdout
    assert (tmp_path / "out" / "cli-run-lora.zip").is_file()
    for phase in ("loading model", "preparing data", "attaching lora", "training", "saving"):
        assert f"▸ {phase}" in result.stderr
    assert "6/6" in result.stderr and "epoch 1/1" in result.stderr


def test_the_command_line_does_not_import_torch():
    code = "import sys, tunery.cli.main; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bad_hyperparameters_are_all_named(data_dir, demo_dataset, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", demo_dataset, learning_rate=-1, batch_size=0)
    result = run(["train", str(recipe)], data_dir)
    assert result.returncode == 1
    assert "training.learning_rate" in result.stderr
    assert "training.batch_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_dataset_names_file_and_line(data_dir, tmp_path):
    dataset = tmp_path / "broken.jsonl"
    dataset.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n')
    recipe = write_recipe(tmp_path / "recipe.yaml", dataset)
    result = run(["train", str(recipe), "--out", str(tmp_path / "out")], data_dir)
    assert result.returncode == 1
    assert "broken.jsonl, line 2: invalid JSON" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_missing_recipe_is_a_clear_error(data_dir, tmp_path):
    result = run(["train", str(tmp_path / "nope.yaml")], data_dir)
    assert result.returncode == 1
    assert "nope.yaml" in result.stderr and "cannot read recipe" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_and_saves_nothing(data_dir, demo_dataset, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", demo_dataset, max_steps=5000)
    env = {**os.environ, "TUNERY_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [*TUNERY, "train", str(recipe), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "out" / "checkpoints").exists():
        time.sleep(0.2)  # the first checkpoint (step 50) proves training is under way
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr and "no adapter was saved" in stderr
    assert not (tmp_path / "out" / "cli-run-lora.zip").exists()
    assert not (tmp_path / "out" / "adapter").exists()


@pytest.mark.parametrize("processes", ["0", "65", "two"])
def test_processes_out_of_range_are_named(data_dir, demo_dataset, tmp_path, processes):
    recipe = write_recipe(tmp_path / "recipe.yaml", demo_dataset)
    result = run(["train", str(recipe), "--processes", processes], data_dir)
    assert result.returncode == 2
    assert "--processes" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_on_two_processes_and_ctrl_c_leaves_none(data_dir, demo_dataset, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", demo_dataset, batch_size=4)
    out = tmp_path / "out"
    result = run(["train", str(recipe), "--out", str(out), "--processes", "2"], data_dir)
    assert result.returncode == 0, result.stderr
    assert "trained 6 steps" in result.stdout
    assert "training on 2 processes of this node, batch 4 per process" in result.stderr
    batch = json.loads((out / "run.json").read_text())["batch"]
    assert (batch["processes"], batch["effective"]) == (2, 8)

    # Ctrl-C in a terminal reaches the whole process group: the ranks leave it to tunery.
    long = write_recipe(tmp_path / "long.yaml", demo_dataset, batch_size=4, max_steps=5000)
    process = subprocess.Popen(
        [*TUNERY, "train", str(long), "--out", str(tmp_path / "long"), "--processes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TUNERY_DATA_DIR": str(data_dir)},
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (tmp_path / "long" / "checkpoints").exists():
        time.sleep(0.2)  # the first checkpoint (step 50) proves training is under way
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr
    assert not (tmp_path / "long" / "adapter").exists()
    # multiprocessing's resource tracker leaves last, once it reads the end of its pipe.
    deadline = time.monotonic() + 10
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(process.pid) == []
