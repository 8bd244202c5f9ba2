"""What a tier of several devices changes before a run trains, in process on the in-memory
backend: the tiers list says how many devices, the estimate plans batch_size per device
(fewer steps, the effective batch, time from the scaling prior until a run on as many
devices is measured), the memory plan is per device, and the worker's spec carries the
devices."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import in_process_app, payload
from fastapi.testclient import TestClient

from tunery.backends.fake import FakeBackend
from tunery.db import Run
from tunery.runs.attempts import attempt_spec
from tunery.runs.estimate import DATA_PARALLEL_EFFICIENCY
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings
from tunery.tiers import TierSettings

API = "/api/v1"
EXAMPLES = 377  # the demo dataset's 400 rows less 3 sample prompts and 20 validation rows


@pytest.fixture
def http(data_dir: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings.load(data_dir)
    settings.tiers = [
        TierSettings(id="cpu", name="CPU", credits_per_minute=1.0),
        TierSettings(
            id="cpu2", name="CPU x2", credits_per_minute=2.0, gpus=0, processes=2, tflops=0.04
        ),
        TierSettings(id="a100", name="A100", credits_per_minute=0.0),
        TierSettings(id="a100x2", name="2 A100", credits_per_minute=0.0, gpus=2, gpu_memory_gib=79),
    ]
    settings.nodes = [NodeSettings(name=f"n-{tier.id}", tier=tier.id) for tier in settings.tiers]
    with in_process_app(settings) as (client, token):
        yield client, {"Authorization": f"Bearer {token}"}


def post(http: tuple[TestClient, dict[str, str]], path: str, body: Any) -> Any:
    client, auth = http
    response = client.post(f"{API}{path}", json=body, headers=auth)
    assert response.status_code in (200, 201), response.text
    return response.json()


def dataset(http: tuple[TestClient, dict[str, str]], path: Path) -> str:
    client, auth = http
    with path.open("rb") as file:
        response = client.post(f"{API}/datasets", files={"file": (path.name, file)}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_the_tiers_say_what_a_run_trains_on(http) -> None:
    client, auth = http
    tiers = {tier["id"]: tier for tier in client.get(f"{API}/tiers", headers=auth).json()}
    assert {tier: (t["gpus"], t["devices"]) for tier, t in tiers.items()} == {
        "cpu": (0, 1),
        "cpu2": (0, 2),
        "a100": (1, 1),
        "a100x2": (2, 2),
    }


def test_batch_size_is_per_device_and_the_prior_scales_with_the_devices(
    http, demo_dataset: Path
) -> None:
    body = payload(dataset(http, demo_dataset), training={"max_steps": 0, "epochs": 2})
    one = post(http, "/runs/estimate", body)
    two = post(http, "/runs/estimate", {**body, "gpu_tier": "cpu2"})
    assert (one["devices"], one["effective_batch"]) == (1, 4)
    assert (two["devices"], two["effective_batch"]) == (2, 8)
    assert one["total_steps"] == math.ceil(EXAMPLES / 4) * 2
    assert two["total_steps"] == math.ceil(EXAMPLES / 8) * 2
    assert two["tokens"] == pytest.approx(one["tokens"], rel=0.01)
    speedup = one["seconds"] / two["seconds"]
    assert speedup == pytest.approx(2 * DATA_PARALLEL_EFFICIENCY, rel=0.02)
    assert any("2 devices at 85%" in note for note in two["notes"])
    accumulated = post(
        http,
        "/runs/estimate",
        {
            **body,
            "gpu_tier": "cpu2",
            "training": {**body["training"], "gradient_accumulation_steps": 3},
        },
    )
    assert accumulated["effective_batch"] == 24


def test_only_runs_on_as_many_devices_measure_a_tier(http, demo_dataset: Path) -> None:
    body = payload(dataset(http, demo_dataset), gpu_tier="cpu2", validation={"split": 0})
    run = post(http, "/runs", body)
    client, _ = http
    plane = client.app.state.plane
    with plane.sessions.begin() as session:
        done = session.get(Run, run["id"])
        done.status = "completed"
        done.finished_at = done.created_at + 60
        done.metrics = {"step": 6, "total_steps": 6, "training_seconds": 3.0}
        measured_on_one = dict(done.estimate)
    assert post(http, "/runs/estimate", body)["throughput_source"] == "measured"
    with plane.sessions.begin() as session:
        # As if the run had been planned when the tier had one device.
        session.get(Run, run["id"]).estimate = {**measured_on_one, "devices": 1}
    assert post(http, "/runs/estimate", body)["throughput_source"] == "prior"


def test_the_memory_plan_is_per_device_with_the_all_reduce(http, demo_dataset: Path) -> None:
    body = payload(dataset(http, demo_dataset), base_model="Qwen/Qwen2.5-0.5B-Instruct")
    body["training"].update(max_seq_length=1024, mixed_precision="bf16")
    one = post(http, "/runs/estimate", {**body, "gpu_tier": "a100"})
    two = post(http, "/runs/estimate", {**body, "gpu_tier": "a100x2"})
    assert one["gpu_memory_gib"] == two["gpu_memory_gib"] == 79.0
    # The same examples per device; the all-reduce's buffers on top (NCCL's half a GiB).
    assert 0.5 <= two["peak_memory_gib"] - one["peak_memory_gib"] <= 0.7


def test_the_worker_is_told_its_devices(http, demo_dataset: Path) -> None:
    client, _ = http
    plane = client.app.state.plane
    backend: FakeBackend = plane.workers
    run = post(http, "/runs", payload(dataset(http, demo_dataset), gpu_tier="cpu2"))
    tick(plane)
    (launch,) = [launch for launch in backend.launches if launch.run_id == run["id"]]
    spec = attempt_spec(plane, attempt_id=launch.attempt_id, token=launch.token)
    assert (spec.devices, spec.run_id) == (2, run["id"])
