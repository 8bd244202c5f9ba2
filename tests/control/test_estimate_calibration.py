"""The estimate's prior on a local tier, end to end on a real server: the tier benchmarks the
model's shape once, its estimate then covers every billed part and the startup, and a
completed run sets the estimate beside what it took, on the run and in its run.json.

Slow: the benchmark and a run with a GGUF export take minutes on two busy cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from control_harness import Client, payload, wait_until

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_tier_benchmarks_a_shape_and_a_completed_run_is_checked(start_server) -> None:
    server = start_server(calibrate_estimates=True)
    client = Client(server)
    body = payload(
        client.dataset(EXAMPLES / "demo-dataset.jsonl"),
        "checked",
        training={"max_steps": 12},
        export={"gguf": True},
        validation={"split": 0.05},
    )
    first = client.http.post("/runs/estimate", json=body).json()
    assert first["throughput_source"] == "prior"  # measuring has only started
    assert set(first["phases"]) == {"training", "evaluations"}
    assert any("not counted yet: saving, exporting, sampling" in note for note in first["notes"])

    def calibrated() -> dict | None:
        estimate = client.http.post("/runs/estimate", json=body).json()
        return estimate if estimate["throughput_source"] == "calibrated" else None

    estimate = wait_until(calibrated, timeout=900, interval=5, what="the tier's benchmark")
    assert set(estimate["phases"]) == {
        "training",
        "evaluations",
        "saving",
        "exporting",
        "sampling",
        "uploading",
    }
    assert estimate["seconds"] == pytest.approx(sum(estimate["phases"].values()), abs=0.5)
    assert estimate["startup_seconds"] > 0
    assert len(list((server.root / "calibrations").glob("*.json"))) == 1

    run = client.submit_ok(body)
    assert run["estimate"]["throughput_source"] == "calibrated"
    finished = client.wait_terminal(run["id"], timeout=1200)
    assert finished["status"] == "completed", finished
    check = finished["estimate_check"]
    assert check["source"] == "calibrated"
    assert check["actual_seconds"] == pytest.approx(finished["metrics"]["billable_seconds"], 0.01)
    assert check["seconds_ratio"] == pytest.approx(
        check["actual_seconds"] / check["estimated_seconds"], rel=0.01
    )
    assert set(check["phases"]) >= {"training", "saving", "exporting", "sampling", "uploading"}
    assert all(part["actual"] is not None for part in check["phases"].values())
    kept = json.loads((server.root / "runs" / run["id"] / "run.json").read_text())
    # run.json is written before the run's last billed seconds (its upload) are settled.
    assert kept["estimate_check"]["seconds_ratio"] == pytest.approx(check["seconds_ratio"], 0.01)
    assert kept["timings"]["exporting"] > 0

    # The next estimate of the model stands on what that run measured.
    assert client.http.post("/runs/estimate", json=body).json()["throughput_source"] == "measured"
