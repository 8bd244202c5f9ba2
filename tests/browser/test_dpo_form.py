"""Preference tuning in the studio: a dataset's kind, the method choice with beta and "start
from run", the reward charts of a DPO run, and Rerun keeping all of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from control_harness import Client, payload
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_dpo_from_a_completed_run_through_the_form(studio_server, open_studio) -> None:
    client = Client(studio_server)
    sft = client.submit_ok(
        payload(
            client.dataset(EXAMPLES / "demo-dataset.jsonl"), "sft-first", training={"max_steps": 3}
        )
    )
    assert client.wait_terminal(sft["id"], timeout=300)["status"] == "completed"
    client.dataset(EXAMPLES / "demo-preferences.jsonl")

    page = open_studio(studio_server)
    page.get_by_role("link", name="New run").click()
    datasets = page.locator("#f-datasets")
    expect(datasets).to_contain_text("demo-preferences.jsonl")
    expect(datasets).to_contain_text("preference pairs (dpo)")
    expect(datasets).to_contain_text("chat rows (sft)")
    expect(page.locator("#f-beta-field")).to_be_hidden()
    page.get_by_label("Objective").select_option("dpo")
    expect(page.locator("#f-beta-field")).to_be_visible()
    page.get_by_label("DPO beta").fill("0.2")
    # Starting from the SFT run brings its base model and LoRA shape (rank 4, alpha 8).
    page.get_by_label("Start from").select_option(sft["id"])
    expect(page.get_by_label("Rank")).to_have_value("4")
    expect(page.get_by_label("Alpha")).to_have_value("8")
    page.get_by_label("Name", exact=True).fill("then-dpo")
    page.get_by_label(re.compile("demo-preferences.jsonl")).check()
    page.get_by_label("Max steps").fill("4")
    page.get_by_label("Batch size").fill("4")
    page.get_by_label(re.compile("Export a merged GGUF")).uncheck()
    page.get_by_label("I hold the rights").check()
    page.get_by_label("I accept the base model's license").check()
    page.get_by_role("button", name="Start run").click()

    expect(page).to_have_url(re.compile(r"#/runs/run_"))
    run_id = page.url.rsplit("/", 1)[-1]
    finished = client.wait_terminal(run_id, timeout=300)
    assert finished["status"] == "completed", finished
    assert finished["config"]["method"] == {"type": "dpo", "beta": 0.2}
    assert finished["config"]["init_from"] == sft["id"]
    panel = page.locator(f"#panel-{run_id}")
    margin = panel.get_by_role("img", name="Reward margin (nats, chosen over rejected) by step")
    expect(margin).to_be_visible()
    accuracy = panel.get_by_role("img", name="Reward accuracy (share of pairs) by step")
    expect(accuracy).to_be_visible()
    expect(panel.locator(".chart canvas")).to_have_count(6)

    panel.get_by_role("button", name="Rerun with changes").click()
    expect(page.locator("#view-new")).to_be_visible()
    expect(page.get_by_label("Objective")).to_have_value("dpo")
    expect(page.get_by_label("DPO beta")).to_have_value("0.2")
    expect(page.get_by_label("Start from")).to_have_value(sft["id"])
    assert not page.errors  # type: ignore[attr-defined]
