"""Did it work, and what will it cost: the studio's estimate, eval loss, early stop, samples
beside the base model's, Finish now, Rerun with changes and a deleted Hub entry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from control_harness import Client, payload
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_form_shows_the_estimate_live(studio_server, open_studio) -> None:
    client = Client(studio_server)
    client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    page.get_by_role("link", name="New run").click()
    estimate = page.locator("#f-estimate")
    expect(estimate).to_contain_text("once a model and a dataset are chosen")
    page.locator("#f-datasets input").first.check()
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Max steps").fill("0")
    page.get_by_label("Epochs", exact=True).fill("1")
    # 400 rows: 3 sample prompts and 20 validation rows held out; 377 / 4 rows per step.
    expect(estimate.locator('[data-estimate="data"]')).to_contain_text(
        "377 training examples of 400 rows (20 for validation)"
    )
    expect(estimate.locator('[data-estimate="data"]')).to_contain_text("95 steps")
    expect(estimate.locator('[data-estimate="credits"]')).to_contain_text("covers it")
    # Editing updates it (debounced), and a bad field says what blocks the estimate.
    page.get_by_label("Max steps").fill("7")
    expect(estimate.locator('[data-estimate="data"]')).to_contain_text("7 steps")
    page.get_by_label("Rank").fill("0")
    expect(estimate).to_contain_text("lora.rank")
    assert not page.errors  # type: ignore[attr-defined]


def test_the_estimate_says_when_a_run_cannot_fit_its_card(
    start_studio, open_studio, tmp_path: Path
) -> None:
    server = start_studio(
        tiers=[
            {"id": "cpu", "name": "CPU", "credits_per_minute": 1.0},
            {"id": "t4", "name": "NVIDIA T4", "credits_per_minute": 0},
        ],
        nodes=[{"name": "local-0", "tier": "cpu"}, {"name": "local-1", "tier": "t4"}],
    )
    long_answers = tmp_path / "long-answers.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "Tell me everything."},
            {"role": "assistant", "content": "word " * 1_600},
        ]
    }
    long_answers.write_text((json.dumps(row) + "\n") * 40)
    Client(server).dataset(long_answers)
    page = open_studio(server)
    page.get_by_role("link", name="New run").click()
    expect(page.locator("#f-tiers")).to_contain_text("15 GiB")
    page.locator("#f-datasets input").first.check()
    page.locator("#f-model").select_option("Qwen/Qwen2.5-0.5B-Instruct")
    page.locator("#tier-t4").check()
    page.get_by_label("Gradient checkpointing").uncheck()
    page.get_by_label("Batch size").fill("8")
    estimate = page.locator("#f-estimate")
    problems = estimate.locator('[data-estimate="problems"]')
    expect(problems).to_contain_text("training.batch_size: 8 examples of up to")
    expect(problems).to_contain_text("the NVIDIA T4 has 15 GiB")
    expect(problems).to_contain_text(re.compile(r"use training\.batch_size \d+ or lower"))
    fits = re.search(r"batch_size (\d+) or lower", problems.inner_text())
    assert fits is not None
    page.get_by_label("Batch size").fill(fits.group(1))
    expect(estimate.locator('[data-estimate="memory"]')).to_contain_text(
        re.compile(r"Peak GPU memory about [\d.]+ GiB of the card's 15(\.0)? GiB")
    )
    assert not page.errors  # type: ignore[attr-defined]


def test_a_finished_run_shows_eval_loss_the_early_stop_and_samples_side_by_side(
    studio_server, open_studio
) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    # Built to overfit: a high learning rate on a small split, evaluated every 4 steps.
    run = client.submit_ok(
        payload(
            dataset_id,
            "overfit",
            training={"max_steps": 60, "learning_rate": 3e-2, "eval_every_steps": 4},
            validation={"split": 0.05},
            early_stopping={"patience": 2},
            # The learning rate is far above what usually works, on purpose.
            accept_warnings=True,
        )
    )
    finished = client.wait_terminal(run["id"], timeout=300)
    assert finished["status"] == "completed", finished
    page = open_studio(studio_server)
    page.goto(f"{studio_server.url}/#/runs/{run['id']}")
    panel = page.locator(f"#panel-{run['id']}")
    expect(panel.locator('[data-stat="eval"]')).to_have_text(re.compile(r"\d+\.\d{4}"))
    evaluation = finished["evaluation"]
    if evaluation["stopped_early"]:
        expect(panel.locator('[data-note="outcome"]')).to_contain_text(
            f"Stopped early at step {evaluation['stopped_at_step']}"
        )
    samples = panel.locator(".sample")
    expect(samples).to_have_count(3)
    first = samples.first
    expect(first.locator('[data-answer="tuned"] h4')).to_have_text("Tuned")
    expect(first.locator('[data-answer="base"] h4')).to_have_text("Base model")
    expect(first.locator('[data-answer="expected"] h4')).to_have_text("Reference")
    expect(panel.locator(".chart canvas")).to_have_count(4)


def test_rerun_opens_the_form_prefilled_and_a_deleted_hub_entry_is_said(
    studio_server, open_studio
) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    run = client.submit_ok(
        payload(
            dataset_id,
            "first",
            training={"max_steps": 3, "batch_size": 2},
            validation={"split": 0.1},
        )
    )
    finished = client.wait_terminal(run["id"], timeout=300)
    assert finished["status"] == "completed", finished
    deleted = client.http.delete(f"/hub/{finished['hub_entry_id']}")
    assert deleted.status_code == 204, deleted.text
    page = open_studio(studio_server)
    page.goto(f"{studio_server.url}/#/runs/{run['id']}")
    panel = page.locator(f"#panel-{run['id']}")
    expect(
        panel.get_by_role("button", name=re.compile("deleted from the Hub")).first
    ).to_be_disabled()
    panel.get_by_role("button", name="Rerun with changes").click()
    expect(page.locator("#view-new")).to_be_visible()
    expect(page.get_by_label("Name", exact=True)).to_have_value("first-rerun")
    expect(page.get_by_label("Max steps")).to_have_value("3")
    expect(page.get_by_label("Batch size")).to_have_value("2")
    expect(page.locator("#f-val-split")).to_have_value("0.1")
    # What a blank split would hold out, in the server's words.
    expect(page.locator("#f-val-help")).to_contain_text(
        "a blank split holds out 5% of the rows (at most 500) of data with 200 rows or more"
    )
    expect(page.get_by_label("I hold the rights")).not_to_be_checked()


def test_finish_now_sits_beside_cancel_while_training(studio_server, open_studio) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    run = client.submit_ok(payload(dataset_id, "long", training={"max_steps": 400}))
    client.wait_status(run["id"], "training", timeout=120)
    page = open_studio(studio_server)
    page.goto(f"{studio_server.url}/#/runs/{run['id']}")
    panel = page.locator(f"#panel-{run['id']}")
    expect(panel.get_by_role("button", name="Cancel run")).to_be_visible()
    panel.get_by_role("button", name="Finish now").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Finish now").click()
    expect(panel.locator('[data-note="outcome"]')).to_contain_text("Finishing")
    expect(panel.get_by_role("button", name="Finish now")).to_have_count(0)
    assert client.run(run["id"])["finish_requested"] is True
    client.cancel_ok(run["id"])


def test_pause_and_resume_from_the_run_panel(studio_server, open_studio) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    run = client.submit_ok(payload(dataset_id, "pausable", training={"max_steps": 400}))
    client.wait_status(run["id"], "training", timeout=120)
    page = open_studio(studio_server)
    page.goto(f"{studio_server.url}/#/runs/{run['id']}")
    panel = page.locator(f"#panel-{run['id']}")
    panel.get_by_role("button", name="Pause").click()
    outcome = panel.locator('[data-note="outcome"]')
    expect(outcome).to_contain_text(re.compile("Pausing|Paused"))
    client.wait_status(run["id"], "paused", timeout=120)
    pill = page.locator(f"#run-{run['id']} .pill")
    expect(pill).to_have_attribute("data-status", "paused")
    expect(pill).to_contain_text("Paused")
    expect(outcome).to_contain_text("Paused: its checkpoint is saved")
    expect(panel.get_by_role("button", name="Pause")).to_have_count(0)
    panel.get_by_role("button", name="Resume").click()
    client.wait_status(run["id"], {"queued", "waiting_for_gpu", "training"}, timeout=60)
    expect(panel.get_by_role("button", name="Resume")).to_have_count(0)
    client.cancel_ok(run["id"])
