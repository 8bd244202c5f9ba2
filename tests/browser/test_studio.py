"""The web studio in Chromium against a real ``tunery serve`` on the demo model.

What a user does and sees: compose a run in the form, watch its pill and numbers move,
read the samples, download both bundles through the buttons, cancel through the dialog,
get line-numbered dataset errors and per-field submission errors, survive a server
restart and a bad token, and use it at phone width.
"""

from __future__ import annotations

import json
import os
import re
import signal
import zipfile
from pathlib import Path

import pytest
from control_harness import Client, add_account, payload, wait_until
from playwright.sync_api import Page, expect

from tunery.gguf.export import GGUF_BUNDLE_FILES
from tunery.pipeline.save import LORA_BUNDLE_FILES

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCREENSHOTS = ROOT / "build" / "screenshots"
LORA_FILES = set(LORA_BUNDLE_FILES)
GGUF_FILES = set(GGUF_BUNDLE_FILES)


def collapse(values: list[str]) -> list[str]:
    """The values with consecutive repeats removed: the sequence a user saw."""
    return [value for index, value in enumerate(values) if index == 0 or values[index - 1] != value]


def pills_seen(page: Page, run_id: str) -> list[str]:
    seen = page.evaluate("window.__seen.pills")
    return collapse([status for row, status in seen if row == run_id])


def upload_demo_dataset(page: Page) -> None:
    page.get_by_label("Upload a dataset").set_input_files(EXAMPLES / "demo-dataset.jsonl")
    expect(page.locator("#upload-result")).to_contain_text("400 rows")


def compose_run(page: Page, name: str, *, max_steps: int, gguf: bool) -> None:
    page.get_by_role("link", name="New run").click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Max steps").fill(str(max_steps))
    page.get_by_label("Learning rate").fill("2e-3")
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Gradient checkpointing").uncheck()
    page.get_by_label("Export a merged GGUF").set_checked(gguf)
    page.get_by_label("I hold the rights").check()
    page.get_by_label("I accept the base model's license").check()


def submit(page: Page) -> str:
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"#/runs/run_"))
    return page.url.rsplit("/", 1)[-1]


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def stat(page: Page, run_id: str, name: str) -> str:
    return page.locator(f'#panel-{run_id} [data-stat="{name}"]').inner_text()


def download(page: Page, button_name: str, target: Path) -> tuple[Path, str]:
    with page.expect_download() as info:
        page.get_by_role("button", name=button_name).first.click()
    path = target / info.value.suggested_filename
    info.value.save_as(path)
    return path, info.value.url


def test_a_run_from_the_form_to_its_downloads(studio_server, open_studio, tmp_path: Path) -> None:
    # Another run holds the only node, so this one visibly waits its turn in the queue.
    client = Client(studio_server)
    blocker = client.submit_ok(
        payload(
            client.dataset(EXAMPLES / "demo-dataset.jsonl"), "blocker", training={"max_steps": 30}
        )
    )
    client.wait_status(blocker["id"], "training", timeout=120)
    page = open_studio(studio_server)
    expect(page.locator("#connection")).to_have_text(re.compile("Live"))
    compose_run(page, "browser-run", max_steps=20, gguf=True)
    upload_demo_dataset(page)
    run_id = submit(page)

    header = page.locator(f"#run-{run_id} .run-header")
    pill = page.locator(f"#run-{run_id} .pill")
    expect(header).to_contain_text("#1 in queue")
    expect(pill).to_have_attribute("data-status", "completed", timeout=300_000)
    assert pills_seen(page, run_id) == ["queued", "waiting_for_gpu", "training", "completed"]
    expect(pill).to_have_text("Completed")

    # The numbers moved while it trained, and show the finished run now.
    steps = collapse(page.evaluate("window.__seen.steps"))
    assert len([step for step in steps if re.fullmatch(r"\d+/20", step)]) >= 3, steps
    assert stat(page, run_id, "step") == "20/20"
    assert stat(page, run_id, "epoch") == "1/1"  # 20 steps of 4 rows: within epoch 1
    assert re.fullmatch(r"\d+\.\d{4}", stat(page, run_id, "loss"))
    assert stat(page, run_id, "eta") == "done"
    assert re.fullmatch(r"\d+(m \d\ds|s)", stat(page, run_id, "duration"))
    api_run = Client(studio_server).run(run_id)
    assert stat(page, run_id, "credits") == f"{api_run['metrics']['credits']:.2f}"
    expect(page.locator(f"#panel-{run_id} [role=progressbar]")).to_have_attribute(
        "aria-valuenow", "100"
    )
    expect(page.locator(f"#panel-{run_id} .chart canvas").first).to_be_visible()
    samples = page.locator(f"#panel-{run_id} .sample")
    expect(samples).to_have_count(3)
    assert samples.first.locator(".sample-response").inner_text().strip()
    screenshot(page, "run-panel-completed.png")

    # Both bundles through the buttons; every click mints a fresh signed URL.
    lora, first_url = download(page, "Download LoRA", tmp_path)
    assert lora.name == "browser-run-lora.zip"
    assert set(zipfile.ZipFile(lora).namelist()) == LORA_FILES
    _, second_url = download(page, "Download LoRA", tmp_path)
    assert first_url != second_url and "signature=" in second_url
    gguf, _ = download(page, "Download GGUF", tmp_path)
    assert gguf.name == "browser-run-gguf.zip"
    assert set(zipfile.ZipFile(gguf).namelist()) >= GGUF_FILES
    expect(page.locator(f"#panel-{run_id} .link-note")).to_contain_text("fresh signed link")

    # Logs: shown live in the panel and downloadable.
    page.locator(f"#panel-{run_id} summary", has_text="Logs").click()
    expect(page.locator(f"#panel-{run_id} .logs")).to_contain_text("status: completed")
    logs, _ = download(page, "Download logs", tmp_path)
    assert "status: training" in logs.read_text()

    # Configuration snapshot.
    page.locator(f"#panel-{run_id} summary", has_text="Configuration").click()
    config = page.locator(f"#panel-{run_id} .config-grid")
    expect(config).to_contain_text("tunery/demo-tiny")
    expect(config).to_contain_text("demo-dataset.jsonl")
    expect(config).to_contain_text("max_steps")

    # Hub and credits agree with the API.
    page.get_by_role("link", name="Hub").click()
    entry = page.locator(".hub-entry", has_text="browser-run")
    expect(entry).to_contain_text("LoRA adapter: browser-run-lora.zip")
    expect(entry).to_contain_text("GGUF bundle: browser-run-gguf.zip")
    page.get_by_role("link", name="Credits").click()
    balance = Client(studio_server).http.get("/credits").json()["balance"]
    expect(page.locator("#credits-balance")).to_have_text(f"{balance:.2f}")
    expect(page.locator("#ledger-rows")).to_contain_text("grant")
    # The billing rules are the server's, stated once in GET /api/v1/meta.
    rules = Client(studio_server).http.get("/meta").json()["refund_rules"]
    expect(page.locator("#billing-rules li")).to_have_text(rules)

    # Deleting the run record keeps the Hub entry.
    page.goto(f"{studio_server.url}/#/runs/{run_id}")
    page.get_by_role("button", name="Delete run record").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete run record").click()
    expect(page.locator(f"#run-{run_id}")).to_have_count(0)
    # The deleted run held the newest events; the next run's still reach the page.
    after = client.submit_ok(payload(blocker["config"]["dataset_ids"][0], "after-delete"))
    expect(page.locator(f"#run-{after['id']} .pill")).to_have_attribute(
        "data-status", "completed", timeout=120_000
    )
    page.get_by_role("link", name="Hub").click()
    entry = page.locator(".hub-entry", has_text="browser-run")
    expect(entry).to_have_count(1)

    # Deleting the Hub entry removes it and its files.
    entry_id = entry.get_attribute("data-entry-id")
    entry.get_by_role("button", name="Delete entry").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete entry").click()
    expect(entry).to_have_count(0)
    expect(page.locator(".hub-entry", has_text="blocker")).to_have_count(1)
    assert Client(studio_server).http.get(f"/hub/{entry_id}").status_code == 404
    assert not (studio_server.root / "hub" / entry_id).exists()
    assert page.errors == []  # type: ignore[attr-defined]


def test_cancel_through_the_dialog_bills_whole_minutes(studio_server, open_studio) -> None:
    client = Client(studio_server)
    dataset = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    expect(page.locator("#connection")).to_have_text(re.compile("Live"))
    # Submitted from outside the page: the Runs tab shows it without a reload.
    run = client.submit_ok(payload(dataset, "long-run", training={"max_steps": 5000}))
    pill = page.locator(f"#run-{run['id']} .pill")
    expect(pill).to_have_attribute("data-status", "training", timeout=120_000)
    pill.click()
    panel = page.locator(f"#panel-{run['id']}")
    # Let it train a while: the panel shows a curve, an honest ETA and moving numbers.
    step = panel.locator('[data-stat="step"]')
    expect(step).to_have_text(re.compile(r"^([3-9]\d|\d{3,})/5000$"), timeout=120_000)
    expect(panel.locator('[data-stat="eta"]')).to_have_text(re.compile(r"^\d+(h|m|s)"))
    progress = panel.locator("[role=progressbar]").get_attribute("aria-valuenow")
    assert int(progress) < 10, f"a few dozen of 5000 steps show as {progress}%"
    screenshot(page, "run-panel-training.png")

    panel.get_by_role("button", name="Cancel run").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("not reversible")
    expect(dialog).to_contain_text("rounded down to the whole minute")
    # What cancelling bills is the server's number (metrics.cancel_credits), shown.
    expect(dialog).to_contain_text(re.compile(r"so far \d+ min, \d+\.\d\d credits"))
    # Focus stays in the dialog, and Escape keeps the run going.
    for _ in range(3):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('dialog') !== null")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert client.run(run["id"])["status"] == "training"

    # The log box, once open, grows by the lines the server writes for each event.
    panel.locator("summary", has_text="Logs").click()
    expect(panel.locator(".logs")).to_contain_text("status: training")
    panel.get_by_role("button", name="Cancel run").click()
    dialog.get_by_role("button", name="Cancel run").click()
    expect(panel.locator(".logs")).to_contain_text("status: cancelled")
    expect(pill).to_have_attribute("data-status", "cancelled")
    expect(pill).to_have_text("Cancelled")
    cancelled = client.wait_terminal(run["id"])
    minutes = int(cancelled["metrics"]["billable_seconds"] // 60)
    expect(panel.locator(".phase")).to_have_text(
        re.compile(
            rf"billed {minutes} whole minutes? of training, "
            rf"{cancelled['metrics']['credits']:.2f} credits"
        )
    )
    screenshot(page, "run-panel-cancelled.png")
    assert pills_seen(page, run["id"])[-1] == "cancelled"
    # The partial metrics stay: the curve and the step reached.
    steps_done = len(client.metrics(run["id"]))
    assert steps_done >= 30
    expect(step).to_have_text(f"{steps_done}/5000")
    expect(panel.locator(".chart canvas").first).to_be_visible()


def test_a_bad_dataset_shows_its_line_numbers(studio_server, open_studio, tmp_path) -> None:
    broken = tmp_path / "broken.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    good = json.dumps({"messages": turns})
    broken.write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    page = open_studio(studio_server)
    page.get_by_role("link", name="New run").click()
    page.get_by_label("Upload a dataset").set_input_files(broken)
    alert = page.locator("#upload-result [role=alert]")
    expect(alert).to_contain_text("broken.jsonl cannot be used")
    expect(alert).to_contain_text("line 3")

    wrong_type = tmp_path / "notes.txt"
    wrong_type.write_text("hello\n")
    page.get_by_label("Upload a dataset").set_input_files(wrong_type)
    expect(alert).to_contain_text("unsupported file type '.txt'")
    assert Client(studio_server).http.get("/datasets").json() == []


def test_a_blocked_submission_marks_every_field(studio_server, open_studio) -> None:
    page = open_studio(studio_server)
    page.get_by_role("link", name="New run").click()
    expect(page.locator("#f-tiers input")).to_have_count(1)
    page.get_by_label("Name", exact=True).fill("bad name!")
    page.get_by_label("Learning rate").fill("fast")
    page.get_by_label("Rank").fill("0")
    page.get_by_role("button", name="Start run").click()

    expect(page.locator("#submit-problems")).to_contain_text("The run was not started")
    for field in (
        "name",
        "training.learning_rate",
        "lora.rank",
        "dataset_ids",
        "attestations.dataset_rights",
        "attestations.model_license",
    ):
        container = page.locator(f'#run-form [data-field="{field}"]')
        expect(container.locator(".field-error")).to_have_count(1)
    expect(page.get_by_label("Learning rate")).to_have_attribute("aria-invalid", "true")
    assert Client(studio_server).runs() == []
    assert "#/new" in page.url


def test_a_balance_short_of_the_first_minute_blocks_at_the_tier(studio_server, open_studio) -> None:
    token = add_account(studio_server, "broke", credits=0.5)
    client = Client(studio_server, token)
    client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server, token=token)
    expect(page.locator("#balance")).to_have_text("0.50 credits")
    compose_run(page, "too-expensive", max_steps=5, gguf=False)
    page.locator("#f-datasets input").first.check()
    page.get_by_role("button", name="Start run").click()
    tier_error = page.locator('#run-form [data-error-for="credits"]')
    expect(tier_error).to_be_visible()
    expect(tier_error).to_contain_text("does not cover the first minute")
    expect(page.locator("#submit-problems")).to_contain_text("1 problem to fix")
    assert client.runs() == []


def test_the_keyboard_reaches_everything(studio_server, open_studio) -> None:
    client = Client(studio_server)
    dataset = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    run = client.submit_ok(payload(dataset, "keyboard-run"))
    client.wait_terminal(run["id"])
    page = open_studio(studio_server)
    header = page.locator(f"#run-{run['id']} .run-header")
    expect(header).to_have_attribute("aria-expanded", "false")
    # Tab from the top of the page (past the search, filters and column chooser) until the
    # run's header has focus, then open it.
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('run-header')"):
            break
    page.keyboard.press("Enter")
    expect(page.locator(f"#run-{run['id']} .run-header")).to_have_attribute("aria-expanded", "true")
    expect(page.locator(f"#panel-{run['id']}")).to_be_visible()
    expect(page.locator(f"#run-{run['id']} .pill")).to_have_text("Completed")


def test_it_reconnects_after_a_server_restart(studio_server, open_studio) -> None:
    page = open_studio(studio_server)
    connection = page.locator("#connection")
    expect(connection).to_have_text(re.compile("Live"))
    studio_server.kill()
    expect(page.locator("#banner")).to_contain_text("Lost the connection to the server")
    expect(connection).to_have_text(re.compile("Reconnecting"))
    studio_server.start()
    expect(connection).to_have_text(re.compile("Live"), timeout=30_000)
    expect(page.locator("#banner")).to_be_hidden()
    # Still live after the restart: a run submitted now shows up without a reload.
    client = Client(studio_server)
    dataset = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    run = client.submit_ok(payload(dataset, "after-restart"))
    pill = page.locator(f"#run-{run['id']} .pill")
    expect(pill).to_have_attribute("data-status", "completed", timeout=180_000)


def test_a_rejected_token_asks_to_sign_in_again(studio_server, open_studio) -> None:
    page = open_studio(studio_server, token="tny_revoked-or-made-up")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#signin-reason")).to_contain_text("did not accept the token")
    page.get_by_label("API token").fill(studio_server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.locator("#balance")).to_have_text("100.00 credits")


@pytest.mark.parametrize("view", ["new", "runs", "hub", "credits"])
def test_every_page_fits_a_phone(studio_server, open_studio, view: str) -> None:
    page = open_studio(studio_server, width=390, height=844)
    page.goto(f"{studio_server.url}/#/{view}")
    expect(page.locator(f"#view-{view}")).to_be_visible()
    wait_until(lambda: page.locator("#connection").is_visible(), timeout=10, what="stream")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{view} is {overflow}px wider than the phone"


def test_queue_position_retry_and_failure_show_in_the_runs_tab(start_studio, open_studio) -> None:
    # A back-off long enough to read the Retrying message.
    studio_server = start_studio(retry_backoff_seconds=6)
    client = Client(studio_server)
    dataset = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    expect(page.locator("#connection")).to_have_text(re.compile("Live"))

    # One node: the second run waits in the queue and says where it stands.
    first = client.submit_ok(payload(dataset, "first", training={"max_steps": 40}))
    second = client.submit_ok(payload(dataset, "second", training={"max_steps": 5000}))
    queued = page.locator(f"#run-{second['id']}")
    expect(queued.locator(".pill")).to_have_text("Queued")
    expect(queued.locator(".run-header")).to_contain_text("#1 in queue")
    client.cancel_ok(second["id"])
    expect(queued.locator(".pill")).to_have_text("Cancelled")

    # A worker killed mid-training: Retrying (amber), then it resumes and completes.
    first_pill = page.locator(f"#run-{first['id']} .pill")
    client.wait_step(first["id"], 3)
    os.killpg(studio_server.worker_pid(first["id"]), signal.SIGKILL)
    expect(first_pill).to_have_attribute("data-status", "retrying", timeout=60_000)
    expect(first_pill).to_have_text("Retrying")
    first_pill.click()
    expect(page.locator(f"#panel-{first['id']} .run-error")).to_contain_text("Retrying")
    expect(first_pill).to_have_attribute("data-status", "completed", timeout=240_000)
    assert "retrying" in pills_seen(page, first["id"])
    expect(page.locator(f"#panel-{first['id']} .phase")).to_contain_text("attempt 2")

    # A run whose model cannot load fails with its message and hint inline.
    broken = studio_server.root / "models" / "no-weights"  # the folder local models come from
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    missing = client.submit_ok(payload(dataset, "missing-model", base_model=str(broken)))
    page.goto(f"{studio_server.url}/#/runs/{missing['id']}")
    failed_pill = page.locator(f"#run-{missing['id']} .pill")
    expect(failed_pill).to_have_attribute("data-status", "failed", timeout=120_000)
    error = page.locator(f"#panel-{missing['id']} .run-error")
    expect(error).to_contain_text("Failed:")
    expect(error).to_contain_text("no-weights")
    expect(error).to_contain_text("Hint:")
    # The refund note is the server's (`refund_note`), the one refund rule.
    expect(error).to_contain_text("Nothing billed: the run ended before its first gradient step.")
