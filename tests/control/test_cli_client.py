"""``tunery datasets …`` and ``tunery runs …`` against a real ``tunery serve``, as a user runs them.

The server runs as a subprocess on a free port with its own data dir (the demo model
symlinked in, so it is not rebuilt); each CLI call is a subprocess with ``TUNERY_URL`` and
``TUNERY_DATA_DIR`` set and no ``TUNERY_TOKEN``, so the token comes from the admin-token
file the way a local user gets it. The client's retry and stream-resume logic is also
tested without a server, over ``httpx.MockTransport``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import yaml
from click.testing import CliRunner
from control_harness import free_port

from tunery.cli.client import Client, ClientError, SseEvent, format_problem
from tunery.cli.render import StepProgress
from tunery.cli.runs import RunWatcher, confirm_cancel, describe_run

TUNERY = [sys.executable, "-m", "tunery.cli"]
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Server:
    url: str
    data_dir: Path
    log: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server") / "data"
    (root / "models").mkdir(parents=True)
    (root / "models" / "demo-tiny").symlink_to(demo_model_dir, target_is_directory=True)
    log = root.parent / "serve.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*TUNERY, "serve", "--port", str(port), "--data-dir", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"tunery serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"tunery serve did not come up:\n{log.read_text()}")
        time.sleep(0.2)
    running = Server(url, root, log)
    try:
        yield running
    finally:
        # Workers outlive the server on purpose; cancel what is still running first.
        try:
            for run in running.api("GET", "/runs").json():
                if run["status"] not in TERMINAL:
                    running.api("POST", f"/runs/{run['id']}/cancel")
            time.sleep(0.5)
        except httpx.HTTPError:
            pass
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cli(
    server: Server,
    *args: str,
    input: str | None = None,
    timeout: float = 300,
    **env_overrides: str,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env.update({"TUNERY_URL": server.url, "TUNERY_DATA_DIR": str(server.data_dir)})
    env.update(env_overrides)
    result = subprocess.run(
        [*TUNERY, *args],
        capture_output=True,
        text=True,
        env=env,
        input=input if input is not None else "",
        timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def write_recipe(
    directory: Path, demo_dataset: Path, name: str = "cli-client", **sections: Any
) -> Path:
    """A recipe that lists the dataset by a path relative to the recipe file."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_dataset, directory / "demo-dataset.jsonl")
    recipe: dict[str, Any] = {
        "name": name,
        "base_model": "tunery/demo-tiny",
        "datasets": ["demo-dataset.jsonl"],
        "training": {"max_steps": 6, "gradient_checkpointing": False},
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 8},
        "attestations": {"dataset_rights": True, "model_license": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        elif value is None:
            recipe.pop(key, None)
        else:
            recipe[key] = value
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_count(server: Server) -> int:
    return len(server.api("GET", "/runs").json())


def wait_for_status(server: Server, run_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = server.api("GET", f"/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.2)
    pytest.fail(f"run {run_id} never reached {statuses}")


# Datasets ----------------------------------------------------------------------------


def test_upload_prints_the_id_and_lists_it(server, demo_dataset):
    result = cli(server, "datasets", "upload", str(demo_dataset), "--name", "demo")
    assert result.returncode == 0, result.stderr
    dataset_id = result.stdout.strip().splitlines()[-1]
    assert dataset_id.startswith("ds_")
    assert "400 rows" in result.stderr and "messages" in result.stderr

    listing = cli(server, "datasets", "list")
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if dataset_id in line)
    assert "demo" in line and "messages" in line and "400" in line


def test_bad_dataset_names_the_line(server, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n')
    result = cli(server, "datasets", "upload", str(broken))
    assert result.returncode == 1
    assert "broken.jsonl, line 2" in result.stderr
    assert result.stdout == ""


def test_missing_dataset_file_is_a_clear_error(server, tmp_path):
    result = cli(server, "datasets", "upload", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 1
    assert "nope.jsonl" in result.stderr and "No such file" in result.stderr


# Errors a user can act on ------------------------------------------------------------


def test_bad_hyperparameters_are_all_named_and_nothing_is_created(server, demo_dataset, tmp_path):
    before = run_count(server)
    recipe = write_recipe(
        tmp_path, demo_dataset, training={"learning_rate": -1, "batch_size": 0, "epochs": 0}
    )
    result = cli(server, "runs", "submit", str(recipe))
    assert result.returncode == 1
    for field in ("training.learning_rate", "training.batch_size", "training.epochs"):
        assert field in result.stderr
    assert result.stdout == ""
    assert run_count(server) == before


def test_server_rejection_lists_every_problem(server, demo_dataset, tmp_path):
    before = run_count(server)
    recipe = write_recipe(tmp_path, demo_dataset, attestations=None, gpu_tier="no-such-tier")
    result = cli(server, "runs", "submit", str(recipe))
    assert result.returncode == 1
    for field in ("attestations.dataset_rights", "attestations.model_license", "gpu_tier"):
        assert f"  - {field}: " in result.stderr
    assert run_count(server) == before


def test_missing_recipe_datasets_are_all_named(server, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"name": "x", "base_model": "tunery/demo-tiny", "datasets": ["a.jsonl", "b.jsonl"]}
        )
    )
    result = cli(server, "runs", "submit", str(recipe))
    assert result.returncode == 1
    assert str(tmp_path / "a.jsonl") in result.stderr
    assert str(tmp_path / "b.jsonl") in result.stderr


def test_wrong_token_is_a_clear_error(server):
    result = cli(server, "runs", "list", TUNERY_TOKEN="tny_wrong")
    assert result.returncode == 1
    assert "rejected the API token" in result.stderr
    assert "TUNERY_TOKEN" in result.stderr


def test_missing_token_says_how_to_set_one(server, tmp_path):
    result = cli(server, "runs", "list", TUNERY_DATA_DIR=str(tmp_path))
    assert result.returncode == 1
    assert "no API token" in result.stderr and "TUNERY_TOKEN" in result.stderr


def test_server_down_is_a_clear_error(server):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(server, "runs", "list", TUNERY_URL=url)
    assert result.returncode == 1
    assert f"cannot reach the tunery server at {url}" in result.stderr
    assert "tunery serve" in result.stderr


def test_unknown_run_is_404_not_a_traceback(server):
    for command in (["show"], ["watch"], ["cancel", "--yes"]):
        result = cli(server, "runs", *command, "run_nope")
        assert result.returncode == 1
        assert "no run 'run_nope'" in result.stderr


# Cancelling --------------------------------------------------------------------------


def test_cancel_asks_first_then_cancels(server, demo_dataset, tmp_path):
    recipe = write_recipe(tmp_path, demo_dataset, name="to-cancel", training={"max_steps": 500})
    submitted = cli(server, "runs", "submit", str(recipe))
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]

    declined = cli(server, "runs", "cancel", run_id, input="n\n")
    assert declined.returncode == 1
    assert (
        "Cancelling is not reversible; training time so far is billed in whole minutes. "
        "Cancel run to-cancel? [y/N]"
    ) in declined.stderr
    assert server.api("GET", f"/runs/{run_id}").json()["status"] not in TERMINAL

    cancelled = cli(server, "runs", "cancel", run_id, "--yes")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "Cancelled" in cancelled.stdout and "to-cancel" in cancelled.stdout
    assert server.api("GET", f"/runs/{run_id}").json()["status"] == "cancelled"

    again = cli(server, "runs", "cancel", run_id, "--yes")
    assert again.returncode == 0, again.stderr  # cancel is idempotent

    watched = cli(server, "runs", "watch", run_id)
    assert watched.returncode == 130
    assert "cancelled" in watched.stderr


def test_watch_of_a_failed_run_exits_1_with_the_error(server, demo_dataset, tmp_path):
    broken_model = server.data_dir / "models" / "broken-model"  # the allowed folder
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{}")
    recipe = write_recipe(tmp_path, demo_dataset, name="broken", base_model=str(broken_model))
    submitted = cli(server, "runs", "submit", str(recipe))
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]

    watched = cli(server, "runs", "watch", run_id)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "Failed" in watched.stdout
    error = server.api("GET", f"/runs/{run_id}").json()["error"]
    assert f"error: {error['message'].splitlines()[0]}" in watched.stderr

    shown = cli(server, "runs", "show", run_id)
    assert shown.returncode == 0
    assert "error" in shown.stdout and "Failed" in shown.stdout


# The whole lifecycle -----------------------------------------------------------------


@pytest.mark.slow
def test_submit_watch_show_list_and_cancel_a_completed_run(server, demo_dataset, tmp_path):
    recipe = write_recipe(tmp_path, demo_dataset, name="lifecycle")
    submitted = cli(server, "runs", "submit", str(recipe), "--idempotency-key", "lifecycle-1")
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    assert run_id.startswith("run_")

    # The same key returns the same run; the identical dataset is not uploaded again.
    again = cli(server, "runs", "submit", str(recipe), "--idempotency-key", "lifecycle-1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == run_id
    assert "reusing ds_" in again.stderr

    watched = cli(server, "runs", "watch", run_id, timeout=600)
    output = watched.stdout + watched.stderr
    assert watched.returncode == 0, output
    assert "(training)" in watched.stderr and "(completed)" in watched.stderr
    for phase in ("loading model", "preparing data", "attaching lora", "saving", "sampling"):
        assert f"▸ {phase}" in watched.stderr
    assert "100%|" in watched.stderr and "6/6 epoch 1/1 · loss " in watched.stderr
    assert "credits" in watched.stderr
    assert "sample 1:" in watched.stdout and "lifecycle-lora.zip" in watched.stdout

    shown = cli(server, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    for text in ("Completed", "epoch      1/1", "step 6/6", "loss", "duration", "credits"):
        assert text in shown.stdout
    assert "sample 1:" in shown.stdout and "lifecycle-lora.zip" in shown.stdout

    raw = cli(server, "runs", "show", run_id, "--json")
    run = json.loads(raw.stdout)
    assert run["status"] == "completed" and run["metrics"]["step"] == 6
    assert len(run["samples"]) == 3

    listing = cli(server, "runs", "list")
    assert listing.returncode == 0
    line = next(line for line in listing.stdout.splitlines() if run_id in line)
    assert "lifecycle" in line and "completed" in line and "100%" in line

    refused = cli(server, "runs", "cancel", run_id, "--yes")
    assert refused.returncode == 1
    assert f"run {run_id} is already completed; it cannot be cancelled" in refused.stderr


def test_a_dpo_recipe_names_what_it_cannot_use(server, demo_dataset, tmp_path):
    from tunery.catalog.preference_data import write_preference_dataset

    pairs = write_preference_dataset(tmp_path / "prefs.jsonl", count=20)
    uploaded = cli(server, "datasets", "upload", str(pairs))
    assert uploaded.returncode == 0, uploaded.stderr
    assert "20 rows, preference format (preference pairs (dpo))" in uploaded.stderr
    listing = cli(server, "datasets", "list")
    line = next(line for line in listing.stdout.splitlines() if "prefs.jsonl" in line)
    assert "preference pairs (dpo)" in line

    before = run_count(server)
    # Chat rows for DPO, and a start that is no run of this server.
    recipe = write_recipe(
        tmp_path, demo_dataset, method={"type": "dpo"}, init_from="run_0123456789abcdef"
    )
    result = cli(server, "runs", "submit", str(recipe))
    assert result.returncode == 1
    chat_rows = re.search(r"ds_[0-9a-f]+", result.stderr).group()  # uploaded or reused
    assert (
        f"  - dataset_ids.0: {chat_rows} holds chat rows (messages format); "
        "method.type dpo trains on preference pairs" in result.stderr
    )
    assert "  - init_from: unknown run 'run_0123456789abcdef'" in result.stderr
    assert run_count(server) == before


@pytest.mark.slow
def test_sft_then_dpo_from_it_through_the_cli(server, demo_dataset, tmp_path):
    from tunery.catalog.preference_data import write_preference_dataset

    sft = cli(server, "runs", "submit", str(write_recipe(tmp_path / "sft", demo_dataset)))
    assert sft.returncode == 0, sft.stderr
    sft_id = sft.stdout.strip().splitlines()[-1]
    assert cli(server, "runs", "watch", sft_id, timeout=600).returncode == 0

    directory = tmp_path / "dpo"
    directory.mkdir()
    write_preference_dataset(directory / "prefs.jsonl", count=40)
    recipe = write_recipe(
        directory,
        demo_dataset,
        name="then-dpo",
        datasets=["prefs.jsonl"],
        method={"type": "dpo", "beta": 0.2},
        init_from=sft_id,
        validation={"split": 0.2},
        training={"eval_every_steps": 3},
    )
    submitted = cli(server, "runs", "submit", str(recipe))
    assert submitted.returncode == 0, submitted.stderr
    assert "preference pairs (dpo)" in submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    watched = cli(server, "runs", "watch", run_id, timeout=600)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "(completed)" in watched.stderr
    assert f"the adapter starts from {sft_id}" in watched.stderr
    # Its last step, in its last epoch, with its loss (the pairs the validation split leaves
    # set how many of each).
    assert re.search(r"\b(\d+)/\1 epoch (\d+)/\2 · loss ", watched.stderr), watched.stderr
    assert " · margin " in watched.stderr and " · reward acc " in watched.stderr
    assert "step 3: eval loss " in watched.stderr and "reward accuracy " in watched.stderr
    run = json.loads(cli(server, "runs", "show", run_id, "--json").stdout)
    assert (run["config"]["method"], run["config"]["init_from"]) == (
        {"type": "dpo", "beta": 0.2},
        sft_id,
    )
    assert run["metrics"]["reward_accuracy"] is not None


# The client without a server ---------------------------------------------------------


def test_submit_retries_once_with_the_same_idempotency_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(201, json={"id": "run_1", "status": "queued"})

    client = Client(
        "http://tunery.test", "t", transport=httpx.MockTransport(handler), retry_delay=0
    )
    run = client.submit_run({"name": "x"}, idempotency_key="key-1")
    assert run["id"] == "run_1"
    assert [request.headers["Idempotency-Key"] for request in seen] == ["key-1", "key-1"]


def test_uploads_are_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    client = Client(
        "http://tunery.test", "t", transport=httpx.MockTransport(handler), retry_delay=0
    )
    with pytest.raises(ClientError, match="did not answer in time"):
        client.upload_dataset(Path(__file__))
    assert len(calls) == 1


class DroppingStream(httpx.SyncByteStream):
    """A response body that sends ``chunks`` and then loses the connection."""

    def __init__(self, chunks: list[bytes], *, drop: bool) -> None:
        self._chunks = chunks
        self._drop = drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        if self._drop:
            raise httpx.ReadError("connection reset by peer")


def sse(event_id: int, kind: str, **data: Any) -> bytes:
    payload = json.dumps({"id": event_id, "kind": kind, **data})
    return f"id: {event_id}\nevent: {kind}\ndata: {payload}\n\n".encode()


def event_stream(chunks: list[bytes], *, drop: bool = False) -> httpx.Response:
    headers = {"Content-Type": "text/event-stream; charset=utf-8"}
    return httpx.Response(200, headers=headers, stream=DroppingStream(chunks, drop=drop))


def test_event_stream_resumes_after_a_drop_without_gaps_or_duplicates():
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        after = int(request.headers.get("Last-Event-ID", "0"))
        history = {
            1: sse(1, "status", status="queued", phase="queued"),
            2: sse(2, "phase", phase="loading_model"),
            3: sse(3, "status", status="completed", phase="done"),
        }
        if after == 0:  # the first connection drops after event 2
            body = [b"retry: 0\n\n", history[1], b": keep-alive\n\n", history[2]]
            return event_stream(body, drop=True)
        return event_stream([chunk for event_id, chunk in history.items() if event_id > after])

    client = Client("http://tunery.test", "t", transport=httpx.MockTransport(handler))
    notices: list[str] = []
    events = list(
        client.follow_events(
            "run_1", backoff_seconds=0, on_reconnect=lambda problem, _: notices.append(str(problem))
        )
    )
    assert [event.id for event in events] == ["1", "2", "3"]
    assert len(notices) == 1 and "connection" in notices[0]
    assert [event.event for event in events] == ["status", "phase", "status"]
    assert events[-1].data["status"] == "completed"
    assert "Last-Event-ID" not in requests[0].headers
    assert requests[1].headers["Last-Event-ID"] == "2"


def test_event_stream_gives_up_after_the_reconnect_budget():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Client("http://tunery.test", "t", transport=httpx.MockTransport(handler))
    with pytest.raises(ClientError, match="cannot reach the tunery server"):
        list(client.follow_events("run_1", max_reconnects=2, backoff_seconds=0))


def test_event_stream_follows_the_event_stream_rules(monkeypatch):
    first = (
        b"retry: 3000\n\n: comment\n\nid: 7\nevent: log\n"
        b'data: {"message":\r\ndata: "hi"}\n\ndata:plain\n\n: keep-alive\n\n'
    )
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if len(requests) == 1:
            return event_stream([first], drop=True)
        return event_stream([sse(8, "status", status="completed", phase="done")])

    waits: list[float] = []
    monkeypatch.setattr("tunery.cli.client.time.sleep", waits.append)
    client = Client("http://tunery.test", "t", transport=httpx.MockTransport(handler))
    events = list(client.follow_events("run_1", backoff_seconds=0))
    assert [(e.id, e.event) for e in events] == [("7", "log"), ("7", "message"), ("8", "status")]
    assert events[0].data == {"message": "hi"}
    assert events[1].data == "plain"
    assert waits == [3.0]  # the server's `retry:` sets the wait before reconnecting
    assert requests[0].headers["Accept"] == "text/event-stream"
    assert requests[1].headers["Last-Event-ID"] == "7"


def test_an_answer_that_is_not_an_event_stream_is_a_clear_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, html="<p>a proxy's page</p>")

    client = Client("http://tunery.test", "t", transport=httpx.MockTransport(handler))
    with pytest.raises(ClientError, match="did not answer with an event stream"):
        list(client.follow_events("run_1"))


def test_problems_are_formatted_with_field_or_file_and_line():
    assert format_problem({"field": "training.batch_size", "message": "too small"}) == (
        "training.batch_size: too small"
    )
    assert format_problem(
        {"file": "data.jsonl", "line": 2, "unit": "line", "message": "invalid JSON"}
    ) == ("data.jsonl, line 2: invalid JSON")
    assert format_problem({"file": "data.parquet", "line": None, "message": "empty"}) == (
        "data.parquet: empty"
    )
    assert format_problem({"loc": ["body", "file"], "msg": "Field required"}) == (
        "file: Field required"
    )


# What the terminal shows -------------------------------------------------------------


def test_the_watcher_shows_states_phases_log_lines_and_the_bar(capsys):
    events = [
        ("status", {"status": "training", "phase": "loading_model"}),
        ("phase", {"phase": "preparing_data"}),
        ("log", {"message": "400 examples", "line": "2026-01-02T03:04:05Z 400 examples"}),
        ("log", {"message": "from an older server"}),
        (
            "metrics",
            {"step": 2, "total_steps": 2, "epoch": 0.5, "epochs": 2, "loss": 1.5, "credits": 0.25},
        ),
        ("status", {"status": "retrying", "phase": "backoff", "error": {"message": "node lost"}}),
    ]
    with StepProgress() as progress:
        watcher = RunWatcher(progress)
        for index, (kind, data) in enumerate(events, start=1):
            watcher.handle(SseEvent(str(index), kind, data))
    shown = capsys.readouterr().err
    assert "◌ Training  (training) · loading model" in shown
    assert "▸ preparing data" in shown
    assert "  2026-01-02T03:04:05Z 400 examples" in shown
    assert "  from an older server" in shown
    assert "2/2 epoch 1/2 · loss 1.5000 · ETA estimating… · credits 0.25" in shown
    assert "↻ Retrying  (retrying) · backoff\n  node lost" in shown


def test_show_prefers_the_servers_epoch_and_tells_the_refund():
    run = {
        "id": "run_1",
        "name": "x",
        "status": "failed",
        "phase": "done",
        "metrics": {"epoch": 0.2, "epochs": 3, "current_epoch": 2},
        "refund_note": "refunded: the base model is a verified catalog model",
    }
    lines = dict(describe_run(run))
    assert lines["epoch"] == "2/3"
    assert lines["refund"] == run["refund_note"]
    assert "refund" not in dict(describe_run({**run, "status": "training"}))


def test_the_cancel_prompt_shows_what_cancelling_now_bills():
    run = {"name": "x", "metrics": {"cancel_credits": 1.5}}

    @click.command()
    def ask() -> None:
        raise SystemExit(0 if confirm_cancel(run) else 1)

    declined = CliRunner().invoke(ask, input="\n")
    assert declined.exit_code == 1
    assert "Cancelling now bills 1.50 credits." in declined.output
    assert CliRunner().invoke(ask, input="y\n").exit_code == 0
