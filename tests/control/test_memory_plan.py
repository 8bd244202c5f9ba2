"""A run that cannot fit its tier's card is refused as it is submitted, with what would fit.

In process on the in-memory backend: a server with a CPU node and a T4 node (15 GiB). The
planner's arithmetic has its own tests (tests/pipeline/test_memory.py); these check what a
user submitting to the server sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import in_process_app, payload
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tunery.db import Run
from tunery.settings import NodeSettings, Settings
from tunery.tiers import TierSettings

API = "/api/v1"
QWEN_05B = "Qwen/Qwen2.5-0.5B-Instruct"
MISTRAL_7B = "mistralai/Mistral-7B-Instruct-v0.2"
MISTRAL_7B_SHAPE = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
}


class Studio:
    def __init__(self, http: TestClient, settings: Settings, token: str) -> None:
        self.http, self.settings = http, settings
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any) -> Any:
        return self.http.post(f"{API}{path}", json=body, headers=self.auth)

    def upload(self, path: Path) -> str:
        with path.open("rb") as file:
            response = self.http.post(
                f"{API}/datasets", files={"file": (path.name, file)}, headers=self.auth
            )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def runs_created(self) -> int:
        plane = self.http.app.state.plane  # type: ignore[attr-defined]
        with plane.sessions() as session:
            return session.scalar(select(func.count()).select_from(Run)) or 0


def make_studio(data_dir: Path, t4_memory_gib: float | None = None) -> Iterator[Studio]:
    settings = Settings.load(data_dir)
    settings.nodes = [NodeSettings(name="n0", tier="cpu"), NodeSettings(name="n1", tier="t4")]
    settings.tiers.append(
        TierSettings(id="t4", name="NVIDIA T4", credits_per_minute=0, gpu_memory_gib=t4_memory_gib)
    )
    with in_process_app(settings) as (http, token):
        yield Studio(http, settings, token)


@pytest.fixture
def studio(data_dir: Path) -> Iterator[Studio]:
    yield from make_studio(data_dir)


def long_rows(tmp_path: Path, characters: int, rows: int = 40) -> Path:
    """A chat dataset whose every answer is ``characters`` long (about a quarter as many
    tokens, as the server counts them)."""
    path = tmp_path / f"long-{characters}.jsonl"
    line = {
        "messages": [
            {"role": "user", "content": "Tell me everything."},
            {"role": "assistant", "content": "word " * (characters // 5)},
        ]
    }
    path.write_text("".join(json.dumps(line) + "\n" for _ in range(rows)))
    return path


def on_t4(dataset_id: str, base_model: str, **training: Any) -> dict[str, Any]:
    return payload(
        dataset_id,
        base_model=base_model,
        gpu_tier="t4",
        training={"max_steps": 10, **training},
    )


def problems(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {p["field"]: p["message"] for p in response.json()["detail"]["problems"]}


def suggested(message: str, setting: str) -> int:
    return int(message.split(f"{setting} ")[1].split()[0])


def test_too_large_a_batch_is_refused_with_the_batch_size_that_fits(
    studio: Studio, tmp_path: Path
) -> None:
    dataset_id = studio.upload(long_rows(tmp_path, 8_000))
    body = on_t4(dataset_id, QWEN_05B, batch_size=8, gradient_checkpointing=False)
    found = problems(studio.post("/runs", body))
    message = found["training.batch_size"]
    assert "GiB" in message and "NVIDIA T4" in message and "15 GiB" in message
    batch_size = suggested(message, "training.batch_size")
    assert 1 <= batch_size < 8
    assert studio.runs_created() == 0

    fitting = on_t4(dataset_id, QWEN_05B, batch_size=batch_size, gradient_checkpointing=False)
    estimate = studio.post("/runs/estimate", fitting)
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["gpu_memory_gib"] == 15
    assert 1 < estimate.json()["peak_memory_gib"] <= 15
    assert studio.post("/runs", fitting).status_code == 201
    # One more example per micro-batch would not have fit: the suggestion is the largest.
    one_more = on_t4(dataset_id, QWEN_05B, batch_size=batch_size + 1, gradient_checkpointing=False)
    assert "training.batch_size" in problems(studio.post("/runs", one_more))


def test_the_data_bounds_the_sequence_short_rows_fit_where_long_ones_do_not(
    studio: Studio, tmp_path: Path
) -> None:
    short = studio.upload(long_rows(tmp_path, 400))
    long = studio.upload(long_rows(tmp_path, 8_000))
    settings = {"batch_size": 8, "gradient_checkpointing": False}
    assert studio.post("/runs", on_t4(short, QWEN_05B, **settings)).status_code == 201
    assert "training.batch_size" in problems(
        studio.post("/runs", on_t4(long, QWEN_05B, **settings))
    )
    # Gradient checkpointing keeps one hidden state per layer: the long rows fit with it.
    checkpointed = on_t4(long, QWEN_05B, batch_size=8, gradient_checkpointing=True)
    assert studio.post("/runs", checkpointed).status_code == 201


def test_a_7b_base_on_a_t4_is_refused_until_it_is_4_bit(studio: Studio, tmp_path: Path) -> None:
    dataset_id = studio.upload(long_rows(tmp_path, 400))
    found = problems(studio.post("/runs", on_t4(dataset_id, MISTRAL_7B, batch_size=1)))
    assert "16-bit base weights" in found["lora.quantize_base"]
    assert "nf4" in found["lora.quantize_base"]
    quantized = on_t4(dataset_id, MISTRAL_7B, batch_size=1)
    quantized["lora"] = {**quantized["lora"], "quantize_base": "nf4"}
    estimate = studio.post("/runs/estimate", quantized)
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["peak_memory_gib"] < 15
    assert studio.post("/runs", quantized).status_code == 201


def test_every_problem_comes_together_with_the_memory_one(studio: Studio, tmp_path: Path) -> None:
    dataset_id = studio.upload(long_rows(tmp_path, 400))
    body = on_t4(dataset_id, MISTRAL_7B, batch_size=1)
    body["attestations"] = {"dataset_rights": False, "model_license": True}
    assert set(problems(studio.post("/runs", body))) == {
        "attestations.dataset_rights",
        "lora.quantize_base",
    }


def test_a_local_model_is_planned_from_its_config_json(studio: Studio, tmp_path: Path) -> None:
    dataset_id = studio.upload(long_rows(tmp_path, 400))
    models = studio.settings.models_dir
    big = models / "big-local"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(MISTRAL_7B_SHAPE))
    assert "lora.quantize_base" in problems(studio.post("/runs", on_t4(dataset_id, str(big))))

    # A config the server cannot read is the worker's to refuse: the submission goes through.
    broken = models / "broken-config"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert studio.post("/runs", on_t4(dataset_id, str(broken))).status_code == 201
    oversized = models / "oversized-config"
    oversized.mkdir()
    (oversized / "config.json").write_text(json.dumps({**MISTRAL_7B_SHAPE, "pad": "x" * 2_000_000}))
    assert studio.post("/runs", on_t4(dataset_id, str(oversized))).status_code == 201


def test_a_model_of_unknown_size_is_left_to_its_worker_and_the_estimate_says_so(
    studio: Studio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub

    # In the server's Hugging Face cache (so it can be had), outside the catalog and the
    # models directory (so its size is unknown to the server).
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--some-org--some-model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    dataset_id = studio.upload(long_rows(tmp_path, 400))
    body = on_t4(dataset_id, "some-org/some-model")
    estimate = studio.post("/runs/estimate", body)
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["peak_memory_gib"] is None
    assert any("no memory plan" in note for note in estimate.json()["notes"])
    assert studio.post("/runs", body).status_code == 201


def test_cpu_runs_are_not_planned(studio: Studio, tmp_path: Path) -> None:
    dataset_id = studio.upload(long_rows(tmp_path, 8_000))
    body = payload(dataset_id, base_model=QWEN_05B, training={"batch_size": 64})
    estimate = studio.post("/runs/estimate", body)
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["peak_memory_gib"] is None
    assert estimate.json()["gpu_memory_gib"] is None


def test_tiers_show_their_card_memory_and_a_server_can_set_it(
    data_dir: Path, tmp_path: Path
) -> None:
    for studio in make_studio(data_dir, t4_memory_gib=40):
        tiers = studio.http.get(f"{API}/tiers", headers=studio.auth).json()
        assert {tier["id"]: tier["gpu_memory_gib"] for tier in tiers} == {"cpu": None, "t4": 40}
        dataset_id = studio.upload(long_rows(tmp_path, 8_000))
        body = on_t4(dataset_id, QWEN_05B, batch_size=8, gradient_checkpointing=False)
        assert studio.post("/runs", body).status_code == 201


@pytest.mark.parametrize("memory", [0, -4, "lots"])
def test_a_card_memory_that_is_not_a_positive_number_is_refused(memory: Any) -> None:
    with pytest.raises(ValueError, match="gpu_memory_gib"):
        TierSettings(id="t4", name="T4", credits_per_minute=0, gpu_memory_gib=memory)


def test_a_4_bit_base_on_a_tier_without_a_gpu_is_refused(studio: Studio, tmp_path: Path) -> None:
    dataset_id = studio.upload(long_rows(tmp_path, 400))
    body = payload(dataset_id, lora={"quantize_base": "nf4"})
    found = problems(studio.post("/runs", body))
    assert "needs a CUDA GPU" in found["lora.quantize_base"]
    assert "tier cpu has none" in found["lora.quantize_base"]
    assert studio.runs_created() == 0
