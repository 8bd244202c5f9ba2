"""The experiment workflow as a user sees it, in Chromium against a real ``tunery serve``.

The Runs table (columns, sort, search, filters, tags and notes), Compare (curves overlaid by
step or tokens, only the differing configuration, samples side by side), exports (metrics
as CSV and JSONL, the log with its training lines), copy buttons, the headline of a run that
stopped early, a run built to diverge, and the rough edges: no "null" on the page, charts
with axes, Finish now's cost, the pill while a CPU node loads, plain error wording, the
vocabulary read from the server, and at most one request per status change.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import Client, Server, payload, prepare_root, running_server, server_env
from playwright.sync_api import Page, Request, expect

pytestmark = pytest.mark.browser

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def quick(dataset_id: str, name: str, learning_rate: float, **overrides: Any) -> dict[str, Any]:
    """Six evaluated steps on the demo model: seconds of training."""
    return payload(
        dataset_id,
        name,
        training={"max_steps": 6, "learning_rate": learning_rate, "eval_every_steps": 2},
        validation={"split": 0.05},
        **overrides,
    )


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[tuple[Server, dict[str, dict[str, Any]]]]:
    """A server with two finished runs that differ in their learning rate only."""
    root = prepare_root(tmp_path_factory.mktemp("workflow") / "data", demo_model_dir)
    with running_server(root, server_env(root)) as server:
        client = Client(server)
        dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
        runs = {}
        for name, rate in (("slow-lr", 2e-4), ("fast-lr", 2e-3)):
            run = client.submit_ok(quick(dataset_id, name, rate))
            runs[name] = run
        for name, run in runs.items():
            runs[name] = client.wait_terminal(run["id"], timeout=400)
            assert runs[name]["status"] == "completed", runs[name]
        yield server, runs
        client.close()


def live(page: Page) -> None:
    expect(page.locator("#connection")).to_have_text(re.compile("Live"))


def table_names(page: Page) -> list[str]:
    return page.locator("#run-list tr.run .run-name").all_inner_texts()


def test_the_runs_table_sorts_searches_filters_and_chooses_columns(workspace, open_studio) -> None:
    server, runs = workspace
    page = open_studio(server)
    live(page)
    expect(page.locator("#run-list tr.run")).to_have_count(2)
    headers = page.locator("#run-head th").all_inner_texts()
    assert [text.strip(" ▲▼") for text in headers[1:]] == [
        "Status",
        "Name",
        "Base model",
        "Tier",
        "Steps",
        "Final loss",
        "Best eval loss",
        "Duration",
        "Credits",
        "Created",
        "Tags",
    ]
    row = page.locator(f"#run-{runs['fast-lr']['id']}")
    expect(row.locator('[data-column="steps"]')).to_have_text("6/6")
    expect(row.locator('[data-column="loss"]')).to_have_text(
        f"{runs['fast-lr']['metrics']['loss']:.4f}"
    )
    expect(row.locator('[data-column="eval"]')).to_have_text(
        f"{runs['fast-lr']['evaluation']['best_eval_loss']:.4f}"
    )

    # Sorted by the final loss, lowest first, then highest first.
    by_loss = sorted(runs, key=lambda name: runs[name]["metrics"]["loss"])
    page.locator('button[data-sort="loss"]').click()
    expect(page.locator('th[aria-sort="ascending"]')).to_contain_text("Final loss")
    assert table_names(page) == by_loss
    page.locator('button[data-sort="loss"]').click()
    expect(page.locator('th[aria-sort="descending"]')).to_contain_text("Final loss")
    assert table_names(page) == by_loss[::-1]

    # Search by name; a status filter; nothing matching says so.
    page.get_by_label("Search").fill("fast")
    expect(page.locator("#run-list tr.run")).to_have_count(1)
    assert table_names(page) == ["fast-lr"]
    page.get_by_label("Search").fill("")
    status = page.locator('select[data-filter="status"]')
    status.select_option("failed")
    expect(page.locator("#runs-none-match")).to_be_visible()
    status.select_option("completed")
    expect(page.locator("#run-list tr.run")).to_have_count(2)
    status.select_option("")

    # Columns: hidden ones go, and the choice outlives a reload.
    page.locator("details.columns summary").click()
    page.locator("details.columns").get_by_label("Credits").uncheck()
    expect(page.locator('#run-head button[data-sort="credits"]')).to_have_count(0)
    page.reload()
    live(page)
    expect(page.locator('#run-head button[data-sort="duration"]')).to_have_count(1)
    expect(page.locator('#run-head button[data-sort="credits"]')).to_have_count(0)
    assert page.errors == []  # type: ignore[attr-defined]


def test_tags_and_a_note_edited_in_the_studio_reach_every_page(workspace, open_studio) -> None:
    server, runs = workspace
    run_id = runs["slow-lr"]["id"]
    page = open_studio(server)
    other = open_studio(server)  # another tab, following the same account
    live(page)
    live(other)
    page.goto(f"{server.url}/#/runs/{run_id}")
    panel = page.locator(f"#panel-{run_id}")
    panel.get_by_text("Edit tags and note").click()
    panel.get_by_label("Tags (separated by commas)").fill("baseline, lr-sweep")
    panel.get_by_label("Note", exact=True).fill("the learning rate LoRA papers use")
    panel.get_by_role("button", name="Save tags and note").click()
    expect(panel.get_by_role("status").filter(has_text="Saved.")).to_be_visible()
    assert Client(server).run(run_id)["tags"] == ["baseline", "lr-sweep"]
    other_row = other.locator(f"#run-{run_id}")
    expect(other_row.locator('[data-column="tags"] .tag')).to_have_text(["baseline", "lr-sweep"])
    expect(other_row.locator(".run-note")).to_have_text("the learning rate LoRA papers use")

    # A tag from the API or the CLI shows too, and the tag filter finds it.
    patched = Client(server).http.patch(f"/runs/{runs['fast-lr']['id']}", json={"tags": ["v2"]})
    assert patched.status_code == 200, patched.text
    expect(page.locator(f"#run-{runs['fast-lr']['id']} [data-column='tags']")).to_have_text("v2")
    page.goto(f"{server.url}/#/runs")
    page.locator('select[data-filter="tag"]').select_option("baseline")
    expect(page.locator("#run-list tr.run")).to_have_count(1)
    assert table_names(page) == ["slow-lr"]
    page.locator('select[data-filter="tag"]').select_option("")

    # A bad tag is refused at the field, with the server's reason.
    page.goto(f"{server.url}/#/runs/{run_id}")
    panel.get_by_text("Edit tags and note").click()
    panel.get_by_label("Tags (separated by commas)").fill("has space")
    panel.get_by_role("button", name="Save tags and note").click()
    expect(panel.locator(".annotations .field-error")).to_contain_text("letters, digits")

    # Rerun starts from the run's recipe with its tags and note as they are now.
    panel.get_by_role("button", name="Rerun with changes").click()
    expect(page.locator("#view-new")).to_be_visible()
    expect(page.locator("#f-tags")).to_have_value("baseline, lr-sweep")
    expect(page.locator("#f-note")).to_have_value("the learning rate LoRA papers use")
    assert page.errors == [] and other.errors == []  # type: ignore[attr-defined]


def test_compare_overlays_curves_diffs_the_config_and_sets_samples_side_by_side(
    workspace, open_studio
) -> None:
    server, runs = workspace
    page = open_studio(server)
    live(page)
    compare = page.locator("#compare-runs")
    expect(compare).to_be_disabled()
    for name in ("slow-lr", "fast-lr"):
        page.get_by_label(f"Compare {name}").check()
    expect(compare).to_have_text("Compare 2 runs")
    compare.click()
    expect(page.locator("#view-compare")).to_be_visible()
    ids = page.url.rsplit("/", 1)[-1].split(",")
    assert set(ids) == {runs["slow-lr"]["id"], runs["fast-lr"]["id"]}
    chart = page.locator("#compare-chart")
    expect(chart.locator("canvas")).to_have_count(1)
    legend = chart.locator(".u-legend").inner_text()
    for name in ("slow-lr", "fast-lr"):
        assert f"{name} loss (smoothed)" in legend and f"{name} eval loss" in legend
    caption = page.locator("#compare-caption")
    expect(caption).to_have_text(re.compile(r"of each run, by step$"))
    page.get_by_label("tokens trained").check()
    expect(caption).to_have_text(re.compile(r"of each run, by tokens trained$"))
    expect(chart.locator("canvas")).to_have_count(1)

    # Only the fields that differ: the learning rate (the names differ by design).
    differences = page.locator("#config-differences tbody tr")
    expect(differences).to_have_count(1)
    expect(differences.first).to_have_attribute("data-field", "training.learning_rate")
    expect(differences.first.locator("td")).to_have_text(["0.0002", "0.002"])

    # The same three prompts, each run's answer beside the other's.
    samples = page.locator("#compare-samples .sample")
    expect(samples).to_have_count(3)
    first = samples.first.locator(".sample-answer")
    expect(first).to_have_count(2)
    expect(first.locator("h4")).to_have_text(["slow-lr", "fast-lr"])
    assert page.errors == []  # type: ignore[attr-defined]


def test_exports_logs_and_copy_buttons(workspace, open_studio, tmp_path: Path) -> None:
    server, runs = workspace
    run = runs["fast-lr"]
    page = open_studio(server)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"{server.url}/#/runs/{run['id']}")
    panel = page.locator(f"#panel-{run['id']}")

    def download(button: str) -> str:
        with page.expect_download() as info:
            panel.get_by_role("button", name=button).click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        return path.read_text()

    rows = list(csv.DictReader(io.StringIO(download("Download Metrics (CSV)"))))
    assert [row["step"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [bool(row["eval_loss"]) for row in rows] == [False, True, False, True, False, True]
    lines = download("Download Metrics (JSONL)").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    log = download("Download logs")
    assert "status: completed" in log
    assert re.search(r"step 6/6 · loss \d+\.\d{4} · lr ", log), log
    assert "eval after step 6: loss" in log

    panel.get_by_role("button", name="Copy the run id").click()
    expect(panel.get_by_role("button", name="Copy the run id")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == run["id"]
    assert page.errors == []  # type: ignore[attr-defined]


def test_charts_have_height_axes_units_and_values_on_hover(workspace, open_studio) -> None:
    server, runs = workspace
    page = open_studio(server)
    run_id = runs["fast-lr"]["id"]
    page.goto(f"{server.url}/#/runs/{run_id}")
    small = page.locator(f"#panel-{run_id} .chart-small")
    expect(small).to_have_count(3)
    captions = page.locator(f"#panel-{run_id} figure.small-chart figcaption")
    expect(captions).to_have_text(
        ["Learning rate (per step)", "Grad norm (L2, before clipping)", "Throughput (tokens/s)"]
    )
    for index in range(3):
        chart = small.nth(index)
        expect(chart.locator("canvas")).to_have_count(1)
        assert chart.locator("canvas").bounding_box()["height"] >= 100
    # Hovering a step shows readable values: the learning rate in exponent notation.
    rate = small.nth(0)
    box = rate.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    expect(rate.locator(".u-legend")).to_contain_text(re.compile(r"\d\.\de-\d"))


def test_a_run_that_stopped_early_shows_the_kept_step_as_its_headline(
    start_studio, open_studio
) -> None:
    server = start_studio()
    client = Client(server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    # No later evaluation can beat the first by a whole nat: it stops at the second one and
    # keeps the first one's adapter.
    run = client.submit_ok(
        payload(
            dataset_id,
            "stops-early",
            training={"max_steps": 40, "learning_rate": 2e-3, "eval_every_steps": 3},
            validation={"split": 0.05},
            early_stopping={"patience": 1, "min_delta": 1.0},
        )
    )
    finished = client.wait_terminal(run["id"], timeout=400)
    assert finished["status"] == "completed", finished
    assert finished["evaluation"]["stopped_early"] and finished["kept"]["step"] == 3
    page = open_studio(server)
    live(page)
    row = page.locator(f"#run-{run['id']}")
    expect(row.locator(".run-meta")).to_have_text("stopped early at step 6 · kept step 3")
    row.locator(".run-header").click()
    panel = page.locator(f"#panel-{run['id']}")
    metrics = client.metrics(run["id"])
    expect(panel.locator('[data-stat="step"]')).to_have_text("3 of 6")
    expect(panel.locator('[data-stat-label="step"]')).to_have_text("Step kept")
    expect(panel.locator('[data-stat="loss"]')).to_have_text(f"{metrics[2]['loss']:.4f}")
    expect(panel.locator('[data-stat="eval"]')).to_have_text(
        f"{finished['evaluation']['best_eval_loss']:.4f}"
    )
    expect(panel.locator(".chart").first.locator(".u-legend")).to_contain_text("kept adapter")
    assert page.errors == []  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_run_built_to_diverge_fails_and_its_kept_lora_downloads(
    start_studio, open_studio, tmp_path: Path
) -> None:
    server = start_studio()
    client = Client(server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    run = client.submit_ok(
        payload(
            dataset_id,
            "diverges",
            training={
                "max_steps": 60,
                "learning_rate": 1.0,
                "lr_scheduler": "constant",
            },
            lora={"rank": 256, "alpha": 512},
            accept_warnings=True,
        )
    )
    page = open_studio(server)
    page.goto(f"{server.url}/#/runs/{run['id']}")
    pill = page.locator(f"#run-{run['id']} .pill")
    expect(pill).to_have_attribute("data-status", "failed", timeout=600_000)
    failed = client.run(run["id"])
    assert failed["error"]["code"] == "diverged" and failed["hub_entry_id"], failed
    panel = page.locator(f"#panel-{run['id']}")
    error = panel.locator(".run-error")
    expect(error).to_contain_text("Failed: training diverged: the loss rose from")
    expect(error).to_contain_text("Hint: likely cause: training.learning_rate: 1 is above 0.01")
    expect(error).to_contain_text("lora.rank: 256 makes the adapter")
    expect(error).to_contain_text("Not refunded: the run's loss diverged")
    assert "null" not in error.inner_text()
    kept = failed["kept"]["step"]
    expect(panel.locator('[data-note="outcome"]')).to_contain_text(
        f"The loss diverged: the adapter of step {kept}"
    )
    expect(panel.locator('[data-stat="step"]')).to_have_text(
        f"{kept} of {failed['metrics']['step']}"
    )
    with page.expect_download() as info:
        panel.get_by_role("button", name="Download LoRA").click()
    bundle = tmp_path / info.value.suggested_filename
    info.value.save_as(bundle)
    assert bundle.name == "diverges-lora.zip"
    assert "adapter_model.safetensors" in zipfile.ZipFile(bundle).namelist()
    expect(panel.get_by_role("button", name="Download GGUF")).to_have_count(0)
    assert page.errors == []  # type: ignore[attr-defined]


def test_rough_edges_of_the_form(studio_server, open_studio) -> None:
    client = Client(studio_server)
    client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    live(page)
    page.get_by_role("link", name="New run").click()

    # Mistral's LoRA defaults are applied out loud, never silently.
    page.locator("#f-model").select_option("mistralai/Mistral-7B-Instruct-v0.2")
    expect(page.get_by_label("Target modules")).to_have_value("q_proj, k_proj, v_proj, o_proj")
    expect(page.locator("#f-lora-note")).to_contain_text(
        "target modules all-linear → q_proj, k_proj, v_proj, o_proj"
    )
    page.locator("#f-model").select_option("tunery/demo-tiny")

    # Refused fields read in plain words, and the keyboard goes to the first one to fix
    # rather than being lost on the button.
    page.get_by_label("Name", exact=True).fill("bad name!")
    page.get_by_label("Learning rate", exact=True).fill("fast")
    page.get_by_role("button", name="Start run").click()
    problems = page.locator("#submit-problems")
    expect(problems).to_contain_text("The run was not started")
    assert "null" not in problems.inner_text()
    name_error = page.locator('#run-form [data-field="name"] .field-error')
    expect(name_error).to_contain_text("use 1 to 64 letters, digits")
    rate_error = page.locator('#run-form [data-field="training.learning_rate"] .field-error')
    expect(rate_error).to_have_text("training.learning_rate: give a number, such as 0.0002 or 2e-4")
    assert "should match pattern" not in page.locator("#run-form").inner_text()
    expect(page.get_by_label("Name", exact=True)).to_be_focused()

    # The memory planner's advice can be followed from the form: nf4 reaches the server,
    # which refuses a 4-bit base on a tier without a GPU, at that field.
    page.get_by_label("Name", exact=True).fill("four-bit")
    page.get_by_label("Learning rate", exact=True).fill("2e-4")
    page.locator("#f-datasets input").first.check()
    page.get_by_label("I hold the rights").check()
    page.get_by_label("I accept the base model's license").check()
    page.get_by_label("4-bit base (QLoRA)").select_option("nf4")
    page.get_by_role("button", name="Start run").click()
    quantize_error = page.locator('#run-form [data-field="lora.quantize_base"] .field-error')
    expect(quantize_error).to_contain_text("nf4 needs a CUDA GPU")
    expect(page.get_by_label("4-bit base (QLoRA)")).to_be_focused()
    assert client.runs() == []
    assert page.errors == []  # type: ignore[attr-defined]


def test_finish_now_says_what_it_costs_and_the_cpu_pill_never_waits_for_a_gpu(
    studio_server, open_studio
) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    live(page)
    run = client.submit_ok(payload(dataset_id, "long", training={"max_steps": 5000}))
    page.goto(f"{studio_server.url}/#/runs/{run['id']}")
    panel = page.locator(f"#panel-{run['id']}")
    client.wait_step(run["id"], 1)
    expect(panel.locator('[data-stat="step"]')).to_have_text(re.compile(r"^[1-9]\d*/5000$"))
    panel.get_by_role("button", name="Finish now").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text("billed as a completed run")
    expect(dialog).to_contain_text(re.compile(r"\d+\.\d\d credits"))
    confirm = dialog.get_by_role("button", name="Finish now")
    expect(confirm).to_have_class("primary")
    dialog.get_by_role("button", name="Keep training").click()
    client.cancel_ok(run["id"])
    # The CPU node loaded the model under a label that says so: nothing waited for a GPU.
    labels = [label for row, label in page.evaluate("window.__seen.labels") if row == run["id"]]
    assert "Waiting for GPU" not in labels, labels
    assert "Loading model" in labels or "Waiting for a node" in labels, labels
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_status_change_costs_at_most_one_request(studio_server, open_studio) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    live(page)
    expect(page.locator("#balance")).to_have_text("100.00 credits")
    asked: list[str] = []

    def record(request: Request) -> None:
        if "/api/v1/" in request.url and not request.url.endswith("/api/v1/events"):
            asked.append(request.url.split("/api/v1", 1)[1])

    page.on("request", record)
    run = client.submit_ok(payload(dataset_id, "counted"))
    pill = page.locator(f"#run-{run['id']} .pill")
    expect(pill).to_have_attribute("data-status", "completed", timeout=300_000)
    finished = client.run(run["id"])
    # Four status changes (queued, waiting, training, completed): the new run fetched once
    # when its first event arrived, and once more when it finished. Balance and free nodes
    # come with the stream.
    expect(page.locator("#balance")).to_have_text(
        f"{client.http.get('/credits').json()['balance']:.2f} credits"
    )
    assert asked == [f"/runs/{run['id']}", f"/runs/{run['id']}"], asked
    assert finished["status"] == "completed"


def test_the_studio_takes_its_words_and_rules_from_the_server(studio_server, open_studio) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    meta = client.http.get("/meta").json()
    for status in meta["statuses"]:
        if status["id"] == "queued":
            status.update(label="In line", finishable=True)

    def altered(route: Any) -> None:
        route.fulfill(json=meta)

    page.route("**/api/v1/meta", altered)
    page.reload()
    blocker = client.submit_ok(payload(dataset_id, "blocker", training={"max_steps": 5000}))
    waiting = client.submit_ok(payload(dataset_id, "waiting"))
    page.goto(f"{studio_server.url}/#/runs/{waiting['id']}")
    expect(page.locator(f"#run-{waiting['id']} .pill")).to_have_text("In line")
    # Finish now is offered where the server says it is accepted.
    panel = page.locator(f"#panel-{waiting['id']}")
    expect(panel.get_by_role("button", name="Finish now")).to_be_visible()
    client.cancel_ok(waiting["id"])
    client.cancel_ok(blocker["id"])


def test_far_out_settings_are_warned_and_a_made_up_model_is_refused(
    studio_server, open_studio
) -> None:
    client = Client(studio_server)
    client.dataset(EXAMPLES / "demo-dataset.jsonl")
    page = open_studio(studio_server)
    live(page)
    page.get_by_role("link", name="New run").click()
    page.get_by_label("Name", exact=True).fill("far-out")
    page.locator("#f-datasets input").first.check()
    page.get_by_label("I hold the rights").check()
    page.get_by_label("I accept the base model's license").check()
    page.get_by_label("Learning rate", exact=True).fill("1")
    page.get_by_label("Max steps").fill("3")
    # The live estimate says it before anything is submitted.
    warned = page.locator('#f-estimate [data-estimate="warnings"]')
    expect(warned).to_contain_text("training.learning_rate: 1 is above 0.01")

    page.get_by_role("button", name="Start run").click()
    summary = page.locator("#submit-problems")
    expect(summary).to_contain_text("Not started yet: 1 setting far outside what usually works")
    at_field = page.locator('#run-form [data-field="training.learning_rate"] .field-warning')
    expect(at_field).to_be_visible()
    start = summary.get_by_role("button", name="Start anyway")
    expect(start).to_be_focused()
    assert client.runs() == []
    start.click()
    page.wait_for_url(re.compile(r"#/runs/run_"))
    run_id = page.url.rsplit("/", 1)[-1]
    assert client.run(run_id)["config"]["accept_warnings"] is True
    client.cancel_ok(run_id)

    # A custom model the server neither has nor can download is refused at its field, before
    # it waits in a queue (and never "retried three times, not refunded").
    page.get_by_role("link", name="New run").click()
    page.locator("#f-model").select_option("__custom__")
    page.get_by_label("Custom base model").fill("made-up/no-such-model")
    page.get_by_label("Learning rate", exact=True).fill("2e-4")
    page.get_by_label("I hold the rights").check()
    page.get_by_label("I accept the base model's license").check()
    page.get_by_role("button", name="Start run").click()
    error = page.locator('#run-form [data-field="base_model"] .field-error')
    expect(error).to_contain_text("made-up/no-such-model is not in the server's Hugging Face cache")
    assert [run["id"] for run in client.runs()] == [run_id]
    assert page.errors == []  # type: ignore[attr-defined]
