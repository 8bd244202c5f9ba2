"""The effective batch on a tier of two CPU processes, where a user reads it: the tier list,
the New run form beside the batch size, the estimate, and the Run panel's configuration."""

from __future__ import annotations

import pytest
from control_harness import Client
from playwright.sync_api import expect
from test_studio import compose_run, submit, upload_demo_dataset

pytestmark = pytest.mark.browser
PAIR = [{"id": "cpu", "name": "CPU", "credits_per_minute": 1.0, "processes": 2}]
EFFECTIVE = "16 examples per step (4 per device × 2 processes × 2 accumulated)"


def test_the_effective_batch_follows_the_form_and_stays_with_the_run(
    start_studio, open_studio
) -> None:
    server = start_studio(tiers=PAIR)
    page = open_studio(server)
    compose_run(page, "pair-batch", max_steps=400, gguf=False)
    expect(page.locator("#f-tiers")).to_contain_text("2 processes")
    effective = page.locator("#f-effective-batch")
    expect(effective).to_have_text(
        "Effective batch: 8 examples per step (4 per device × 2 processes)"
    )
    page.get_by_label("Gradient accumulation").fill("2")
    expect(effective).to_have_text(f"Effective batch: {EFFECTIVE}")

    upload_demo_dataset(page)
    expect(page.locator('[data-estimate="batch"]')).to_have_text(f"Effective batch: {EFFECTIVE}.")
    run_id = submit(page)
    panel = page.locator(f"#panel-{run_id}")
    panel.get_by_text("Configuration").click()
    expect(panel.locator("dl.config", has_text="Effective batch")).to_contain_text(EFFECTIVE)
    assert page.errors == []  # type: ignore[attr-defined]
    Client(server).cancel_ok(run_id)
