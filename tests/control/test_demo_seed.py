"""``tunery serve --demo [--demo-model M]``: the admin account gets the demo dataset and the
demo run on each demo model, once."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import select

from tunery.backends.fake import FakeBackend
from tunery.cli.local import BUILT_MODELS
from tunery.db import Dataset, Run
from tunery.runs.plane import ControlPlane
from tunery.server import DEMO_DATASET_NAME, DEMO_RUNS, ensure_admin, seed_demo
from tunery.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RECIPE = EXAMPLES / "demo-recipe.yaml"


def test_the_demo_is_seeded_once_and_matches_the_example_recipe(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path)
    assert ensure_admin(settings) is not None
    # The backend answers which tier the demo runs on; seeding starts nothing on it.
    plane = ControlPlane.open(settings, backend=FakeBackend.for_settings(settings))
    try:
        run_id = seed_demo(plane)
        assert run_id is not None
        assert seed_demo(plane) is None  # a restart adds nothing
        with plane.sessions() as session:
            datasets = session.scalars(select(Dataset)).all()
            runs = session.scalars(select(Run)).all()
    finally:
        plane.close()
    assert [(d.name, d.rows, d.format) for d in datasets] == [(DEMO_DATASET_NAME, 400, "messages")]
    assert [(run.id, run.status, run.config["dataset_ids"]) for run in runs] == [
        (run_id, "queued", [datasets[0].id])
    ]
    # Its estimate is recorded as any submission's is, to be measured once it completes.
    assert runs[0].estimate is not None
    assert runs[0].estimate["rows"] == 400 and runs[0].estimate["total_steps"] > 0
    # The studio's demo run is the example recipe's, field for field.
    recipe = yaml.safe_load(RECIPE.read_text())
    config = runs[0].config
    for section in ("training", "lora", "export", "attestations"):
        for key, value in recipe[section].items():
            assert config[section][key] == value, f"{section}.{key}"
    assert (config["name"], config["base_model"]) == (recipe["name"], recipe["base_model"])


def test_the_real_models_demo_run_is_added_once_and_matches_its_example(tmp_path: Path) -> None:
    assert set(DEMO_RUNS) == set(BUILT_MODELS)  # --demo-model offers every demo model
    settings = Settings.load(tmp_path)
    ensure_admin(settings)
    plane = ControlPlane.open(settings, backend=FakeBackend.for_settings(settings))
    try:
        tiny = seed_demo(plane)
        real = seed_demo(plane, "smollm2-135m-instruct")
        assert tiny is not None and real is not None and real != tiny
        assert seed_demo(plane, "smollm2-135m-instruct") is None  # a restart adds nothing
        with plane.sessions() as session:
            run = session.get(Run, real)
            assert run is not None
            config, estimate = run.config, run.estimate
    finally:
        plane.close()
    recipe = yaml.safe_load((EXAMPLES / "demo-real-recipe.yaml").read_text())
    for section in ("training", "lora", "export", "attestations"):
        for key, value in recipe[section].items():
            if key not in ("lr_scheduler", "seed"):  # the defaults, written out in the file
                assert config[section][key] == value, f"{section}.{key}"
    assert (config["name"], config["base_model"]) == (recipe["name"], recipe["base_model"])
    # One epoch of the demo data (less the sample and validation rows) in batches of 8.
    assert estimate is not None and estimate["parameters"] == 134_515_008
    assert estimate["epochs"] == 1 and estimate["total_steps"] == 48
