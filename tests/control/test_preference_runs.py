"""SFT, then DPO from its adapter, through a real server and real workers."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from control_harness import Client, Server, payload

pytestmark = pytest.mark.slow


def test_sft_then_dpo_from_its_adapter(
    server: Server, client_for: Callable[..., Client], demo_dataset: Path, tmp_path: Path
) -> None:
    from tunery.catalog.preference_data import write_preference_dataset

    api = client_for(server)
    sft = api.submit_ok(payload(api.dataset(demo_dataset), name="sft-first"))
    sft = api.wait_terminal(sft["id"])
    assert sft["status"] == "completed", sft["error"]

    pairs = api.dataset(write_preference_dataset(tmp_path / "prefs.jsonl", count=60))
    dpo = api.submit_ok(
        payload(
            pairs,
            name="then-dpo",
            method={"type": "dpo", "beta": 0.2},
            init_from=sft["id"],
            validation={"split": 0.2},
            training={"eval_every_steps": 3},
        )
    )
    assert dpo["estimate"]["tokens"] > 0
    dpo = api.wait_terminal(dpo["id"])
    assert dpo["status"] == "completed", dpo["error"]

    log = api.logs(dpo["id"])
    # The worker fetched the SFT adapter from the server and started from it.
    assert f"the adapter starts from {sft['id']}" in log
    assert "reference log-probabilities of 46 training and 11 validation pairs" in log
    rows = api.metrics(dpo["id"])
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert (rows[0]["reward_margin"], rows[0]["reward_accuracy"]) == (0.0, 0.5)
    assert rows[2]["eval_reward_accuracy"] is not None
    assert dpo["metrics"]["reward_margin"] == rows[-1]["reward_margin"]
    assert dpo["evaluation"]["eval_reward_accuracy"] == rows[-1]["eval_reward_accuracy"]
    assert dpo["config"]["method"] == {"type": "dpo", "beta": 0.2}
    # Rerun keeps the method and where it starts from.
    recipe = api.http.get(f"/runs/{dpo['id']}/recipe").json()
    assert (recipe["method"], recipe["init_from"]) == ({"type": "dpo", "beta": 0.2}, sft["id"])
