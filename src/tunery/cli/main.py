"""The ``tunery`` command line."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from tunery import __version__
from tunery.errors import ConfigError, DatasetError, RunCancelled, TuneryError
from tunery.pipeline.reporting import StepMetrics, StopFlag

if TYPE_CHECKING:
    from tunery.cli.client import Client, ClientError, SseEvent
    from tunery.pipeline.recipe import RunResult

EXIT_FAILED = 1
EXIT_CANCELLED = 130


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


class TerminalReporter:
    """Phases and logs on stderr, a progress bar of the step budget with the Run panel numbers.

    Ctrl-C asks for a cooperative stop after the current step; a second Ctrl-C aborts.
    """

    def __init__(self, stop: StopFlag) -> None:
        self._stop = stop
        self._bar = None

    def phase(self, name: str) -> None:
        self._close_bar()
        click.echo(f"▸ {name.replace('_', ' ')}", err=True)

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(f"  {message}", file=sys.stderr)
        else:
            click.echo(f"  {message}", err=True)

    def resumed(self, history: list[dict[str, Any]]) -> None:
        """The progress bar starts at the resumed step; earlier steps are not shown again."""

    def metrics(self, metrics: StepMetrics) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=metrics.total_steps,
                initial=metrics.step - 1,
                unit="step",
                file=sys.stderr,
                bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {desc}",
                dynamic_ncols=True,
            )
        self._bar.set_description_str(
            f"epoch {metrics.current_epoch}/{metrics.epochs} "
            f"loss {metrics.loss:.4f} · {metrics.tokens_per_second:,.0f} tok/s · "
            f"ETA {format_duration(metrics.eta_seconds)}",
            refresh=False,
        )
        self._bar.update(metrics.step - self._bar.n)
        if metrics.step >= metrics.total_steps:
            self._close_bar()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def report_error(error: TuneryError) -> None:
    click.echo(f"error: {error.message}", err=True)
    if isinstance(error, ConfigError) and len(error.problems) > 1:
        for problem in error.problems:
            click.echo(f"  - {problem}", err=True)
    if isinstance(error, DatasetError) and len(error.problems) > 1:
        for problem in error.problems:
            click.echo(f"  - {problem}", err=True)
    if error.hint:
        click.echo(f"hint: {error.hint}", err=True)


@click.group()
@click.version_option(__version__, prog_name="tunery")
def cli() -> None:
    """tunery: LoRA fine-tuning with a queue, a live Run panel, and Ollama-ready exports."""


@cli.command("demo-model")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write it (default: TUNERY_DATA_DIR/models/demo-tiny).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the model is already there.")
def demo_model(out_dir: Path | None, force: bool) -> None:
    """Build the tiny demo base model tunery/demo-tiny, offline and deterministically."""
    from tunery.catalog.demo import build_demo_model
    from tunery.pipeline.load import demo_model_dir

    target = out_dir or demo_model_dir()
    if force or not (target / "model.safetensors").is_file():
        click.echo("building the demo model (about a minute on 2 cores)…", err=True)
        build_demo_model(target)
    click.echo(str(target))


@cli.command("train")
@click.argument(
    "recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory (default: runs/NAME). Re-running resumes.",
)
def train(recipe_path: Path, out_dir: Path | None) -> None:
    """Run the training pipeline in this process, with a live progress bar."""
    from transformers.utils import logging as transformers_logging

    from tunery.pipeline.config import load_recipe
    from tunery.pipeline.recipe import run_recipe

    # The run's own progress bar is the one to watch; the library's per-file bars are noise.
    transformers_logging.disable_progress_bar()

    stop = StopFlag()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping after this step (Ctrl-C again to abort)…", err=True)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        recipe = load_recipe(recipe_path)
        target = out_dir or Path("runs") / recipe.name
        result = run_recipe(recipe, target, TerminalReporter(stop))
    except RunCancelled as cancelled:
        click.echo(f"cancelled: {cancelled.message}; no adapter was saved", err=True)
        sys.exit(EXIT_CANCELLED)
    except TuneryError as error:
        report_error(error)
        sys.exit(EXIT_FAILED)
    finally:
        signal.signal(signal.SIGINT, previous)

    metrics = result.final_metrics
    click.echo(
        f"trained {metrics.get('step')} steps in "
        f"{format_duration(metrics.get('training_seconds'))} · "
        f"final loss {metrics.get('loss', float('nan')):.4f}"
    )
    report_outcome(result)


def report_outcome(result: RunResult) -> None:
    """Samples and bundles on stdout; a failed export exits 1 with its reason on stderr."""
    for index, sample in enumerate(result.samples, start=1):
        flag = "" if sample["stopped"] else "  [did not stop]"
        click.echo(f"\nsample {index}: {sample['prompt']}\n  → {sample['response']}{flag}")
    click.echo(f"\nLoRA bundle: {result.lora_bundle}")
    if result.gguf_bundle is not None:
        click.echo(f"GGUF bundle: {result.gguf_bundle}")
    if not result.completed:
        error = result.summary["error"]
        click.echo(f"error: {error['message']}", err=True)
        if error.get("hint"):
            click.echo(f"hint: {error['hint']}", err=True)
        sys.exit(EXIT_FAILED)


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def export(run_dir: Path) -> None:
    """Export the GGUF bundle again from a finished run's adapter (no retraining)."""
    from tunery.pipeline.recipe import rerun_export

    try:
        result = rerun_export(run_dir, TerminalReporter(StopFlag()))
    except TuneryError as error:
        report_error(error)
        sys.exit(EXIT_FAILED)
    report_outcome(result)


@cli.command("gguf-toolchain")
def gguf_toolchain() -> None:
    """Fetch llama.cpp's converter at the pinned version (once; later exports work offline)."""
    from tunery.gguf.toolchain import converter_dir, require_llama_cpp

    try:
        require_llama_cpp()
        click.echo(str(converter_dir()))
    except TuneryError as error:
        report_error(error)
        sys.exit(EXIT_FAILED)


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8420, show_default=True, type=int)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory (default: TUNERY_DATA_DIR or ~/.tunery).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Give the admin account the demo dataset and a first demo run, and print a "
    "sign-in link for the studio.",
)
def serve(host: str, port: int, data_dir: Path | None, demo: bool) -> None:
    """Run the control plane, scheduler, local node pool and the web studio at /."""
    import uvicorn

    from tunery.api.app import create_app
    from tunery.server import ADMIN_TOKEN_FILE, data_dir_from, ensure_admin, seed_demo
    from tunery.settings import Settings

    root = data_dir_from(data_dir)
    # Workers inherit it: the demo model and caches resolve under the server's data dir.
    os.environ["TUNERY_DATA_DIR"] = str(root)
    try:
        settings = Settings.load(root)
    except TuneryError as error:
        report_error(error)
        sys.exit(EXIT_FAILED)
    token = ensure_admin(settings)
    if token is not None:
        click.echo(
            f"Created the admin account. Its API token (shown once, also in "
            f"{root / ADMIN_TOKEN_FILE}):\n\n    {token}\n",
            err=True,
        )
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    studio = f"http://{reachable}:{port}"
    app = create_app(settings, server_url=studio)
    nodes = ", ".join(f"{node.name} ({node.tier})" for node in settings.nodes)
    click.echo(f"tunery serving {studio} · data {root} · nodes: {nodes}", err=True)
    if demo:
        try:
            run_id = seed_demo(app.state.plane)
        except TuneryError as error:
            report_error(error)
            sys.exit(EXIT_FAILED)
        if run_id:
            click.echo(f"Submitted the demo run {run_id}.", err=True)
        token = token or (root / ADMIN_TOKEN_FILE).read_text().strip()
    if token is not None:
        # The token rides in the URL fragment, which browsers never send to a server.
        click.echo(f"Open the studio: {studio}/#token={token}", err=True)
    else:
        click.echo(
            f"Open the studio: {studio}/ (sign in with the token in {root / ADMIN_TOKEN_FILE})",
            err=True,
        )
    # Event streams stay open until their run ends; do not let them hold a shutdown hostage
    # (clients reconnect with Last-Event-ID).
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


# Talking to a server: datasets and runs ------------------------------------------------

STATUS_PILLS = {
    "queued": ("◷", "Queued", "bright_black"),
    "waiting_for_gpu": ("◌", "Waiting for GPU", "magenta"),
    "training": ("◌", "Training", "blue"),
    "retrying": ("↻", "Retrying", "yellow"),
    "completed": ("✓", "Completed", "green"),
    "failed": ("✗", "Failed", "red"),
    "cancelled": ("■", "Cancelled", 208),
}
CANCEL_PROMPT = (
    "Cancelling is not reversible; training time so far is billed in whole minutes. "
    "Cancel run {name}?"
)


def report_client_error(error: ClientError) -> None:
    click.echo(f"error: {error.message}", err=True)
    if len(error.problems) > 1 or (error.problems and error.problems[0] not in error.message):
        for problem in error.problems:
            click.echo(f"  - {problem}", err=True)
    if error.hint:
        click.echo(f"hint: {error.hint}", err=True)


def open_client() -> Client:
    from tunery.cli.client import Client

    return Client.from_env()


def pill(status: str) -> str:
    icon, label, color = STATUS_PILLS.get(status, ("?", status, None))
    return click.style(f"{icon} {label}", fg=color, bold=True)


def format_time(value: str | float | None) -> str:
    """An API timestamp (ISO 8601 or epoch seconds) in local time, to the second."""
    from datetime import datetime

    if value is None:
        return "—"
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(value)
        else:
            moment = datetime.fromisoformat(value).astimezone()
    except (ValueError, OverflowError, OSError):
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_size(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def current_epoch(metrics: dict[str, Any]) -> str | None:
    """The epoch in progress, 1-based, as the Run panel's "Epoch X/Y" shows it."""
    epoch, epochs = metrics.get("epoch"), metrics.get("epochs")
    if epoch is None or not epochs:
        return None
    return f"{min(max(1, math.ceil(epoch)), epochs)}/{epochs}"


def panel_numbers(metrics: dict[str, Any], *, with_eta: bool = True) -> str:
    """epoch X/Y · loss L · ETA · credits C, as far as they are known."""
    parts = []
    epoch = current_epoch(metrics)
    if epoch:
        parts.append(f"epoch {epoch}")
    if metrics.get("loss") is not None:
        parts.append(f"loss {metrics['loss']:.4f}")
    if with_eta:
        parts.append(f"ETA {format_duration(metrics.get('eta_seconds'))}")
    if metrics.get("credits") is not None:
        parts.append(f"credits {metrics['credits']:.2f}")
    return " · ".join(parts)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def print_samples(samples: list[dict[str, Any]]) -> None:
    for index, sample in enumerate(samples, start=1):
        flag = "  [did not stop]" if sample.get("stopped") is False else ""
        click.echo(f"\nsample {index}: {sample.get('prompt', '')}")
        click.echo(f"  → {sample.get('response', '')}{flag}")


@cli.group("datasets")
def datasets_group() -> None:
    """Datasets on the server: upload, list (uses TUNERY_URL, TUNERY_TOKEN)."""


@datasets_group.command("upload")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Display name (default: the file name).")
def datasets_upload(file: Path, name: str | None) -> None:
    """Upload and validate a dataset (.jsonl, .csv, .parquet); prints its id."""
    from tunery.cli.client import ClientError

    try:
        with open_client() as client:
            dataset = client.upload_dataset(file, name=name)
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    click.echo(
        f"uploaded {dataset['name']}: {dataset['rows']} rows, {dataset['format']} format",
        err=True,
    )
    click.echo(dataset["id"])


@datasets_group.command("list")
def datasets_list() -> None:
    """The datasets uploaded by this account, newest first."""
    from tunery.cli.client import ClientError

    try:
        with open_client() as client:
            datasets = client.list_datasets()
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    if not datasets:
        click.echo("no datasets yet: upload one with `tunery datasets upload FILE`", err=True)
        return
    rows = [
        [
            dataset["id"],
            dataset["name"],
            dataset["format"],
            str(dataset["rows"]),
            format_size(dataset.get("bytes")),
            format_time(dataset.get("created_at")),
        ]
        for dataset in datasets
    ]
    print_table(["ID", "NAME", "FORMAT", "ROWS", "SIZE", "CREATED"], rows)


@cli.group("runs")
def runs_group() -> None:
    """Runs on the server: submit, list, show, watch, cancel (uses TUNERY_URL, TUNERY_TOKEN)."""


def upload_recipe_datasets(client: Client, paths: list[Path]) -> list[str]:
    """Upload each local dataset, reusing an upload with the same name and content."""
    from tunery.cli.client import ClientError
    from tunery.hub.storage import file_sha256

    unreadable = [path for path in paths if not path.is_file()]
    if unreadable:
        raise ClientError(
            "cannot read the recipe's datasets",
            problems=[f"{path}: no such file" for path in unreadable],
            hint="paths under `datasets:` are relative to the recipe file",
        )
    uploaded = {(d["name"], d["sha256"]): d["id"] for d in reversed(client.list_datasets())}
    ids = []
    for path in paths:
        known = uploaded.get((path.name, file_sha256(path)))
        if known is not None:
            click.echo(f"reusing {known} for {path.name} (same content already uploaded)", err=True)
            ids.append(known)
            continue
        dataset = client.upload_dataset(path)
        click.echo(
            f"uploaded {path.name} → {dataset['id']} "
            f"({dataset['rows']} rows, {dataset['format']} format)",
            err=True,
        )
        uploaded[(dataset["name"], dataset["sha256"])] = dataset["id"]
        ids.append(dataset["id"])
    return ids


@runs_group.command("submit")
@click.argument(
    "recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--idempotency-key",
    default=None,
    help="Submitting again with the same key returns the first run (default: one per call).",
)
def runs_submit(recipe_path: Path, idempotency_key: str | None) -> None:
    """Upload the recipe's local datasets and queue the run; prints its id."""
    import uuid

    import yaml

    from tunery.cli.client import ClientError
    from tunery.pipeline.config import load_recipe

    try:
        recipe = load_recipe(recipe_path)
    except TuneryError as error:
        report_error(error)
        sys.exit(EXIT_FAILED)
    # The payload is the file as written (the server fills in defaults), with local files
    # swapped for uploaded ids; load_recipe already proved it parses and validates.
    payload = dict(yaml.safe_load(recipe_path.read_text(encoding="utf-8")))
    payload.pop("datasets", None)
    payload["base_model"] = recipe.base_model
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"
    try:
        with open_client() as client:
            local = [Path(path) for path in recipe.datasets]
            payload["dataset_ids"] = [
                *recipe.dataset_ids,
                *upload_recipe_datasets(client, local),
            ]
            run = client.submit_run(payload, idempotency_key=key)
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    where = f", position {run['queue_position']} in the queue" if run.get("queue_position") else ""
    click.echo(
        f"submitted {run['name']}: {run['status']}{where} · tier {run.get('tier')}\n"
        f"follow it with: tunery runs watch {run['id']}",
        err=True,
    )
    click.echo(run["id"])


@runs_group.command("list")
def runs_list() -> None:
    """This account's runs, newest first."""
    from tunery.cli.client import ClientError

    try:
        with open_client() as client:
            runs = client.list_runs()
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    if not runs:
        click.echo("no runs yet: submit one with `tunery runs submit RECIPE.yaml`", err=True)
        return
    rows = []
    for run in runs:
        metrics = run.get("metrics") or {}
        position = run.get("queue_position")
        rows.append(
            [
                run["id"],
                run["name"],
                run["status"],
                run.get("phase") or "",
                f"{metrics.get('progress') or 0:.0f}%",
                f"#{position}" if position else "—",
                format_time(run.get("created_at")),
            ]
        )
    print_table(["ID", "NAME", "STATUS", "PHASE", "PROGRESS", "QUEUE", "CREATED"], rows)


def describe_run(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The Run panel as label/value lines."""
    metrics = run.get("metrics") or {}
    status = run["status"]
    state = f"{pill(status)} · {(run.get('phase') or '').replace('_', ' ')}"
    if run.get("queue_position"):
        state += f" · position {run['queue_position']} in the {run.get('tier')} queue"
    if run.get("cancel_requested") and status != "cancelled":
        state += " · cancel requested"
    lines = [("status", state), ("tier", str(run.get("tier") or "—"))]
    if run.get("attempt", 1) > 1 or status == "retrying":
        lines.append(("attempt", str(run.get("attempt"))))
    epoch = current_epoch(metrics)
    if epoch:
        lines.append(("epoch", epoch))
    if metrics.get("total_steps"):
        lines.append(
            (
                "progress",
                f"{metrics.get('progress') or 0:.0f}% "
                f"(step {metrics.get('step') or 0}/{metrics['total_steps']})",
            )
        )
    if metrics.get("loss") is not None:
        lines.append(("loss", f"{metrics['loss']:.4f}"))
    if status == "training":
        lines.append(("ETA", format_duration(metrics.get("eta_seconds"))))
    if metrics.get("duration_seconds") is not None:
        lines.append(("duration", format_duration(metrics["duration_seconds"])))
    if metrics.get("credits") is not None:
        lines.append(("credits", f"{metrics['credits']:.2f}"))
    lines.append(("created", format_time(run.get("created_at"))))
    if run.get("started_at"):
        lines.append(("started", format_time(run["started_at"])))
    if run.get("finished_at"):
        lines.append(("finished", format_time(run["finished_at"])))
    error = run.get("error") or {}
    if error.get("message"):
        lines.append(("error", error["message"]))
        if error.get("hint"):
            lines.append(("hint", error["hint"]))
    artifacts = run.get("artifacts") or {}
    files = [name for name in (artifacts.get("lora"), artifacts.get("gguf")) if name]
    if files:
        lines.append(("artifacts", ", ".join(files)))
    if run.get("hub_entry_id"):
        lines.append(("hub entry", run["hub_entry_id"]))
    return lines


@runs_group.command("show")
@click.argument("run_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the run object as JSON.")
def runs_show(run_id: str, as_json: bool) -> None:
    """One run as the Run panel shows it: state, numbers, error, samples, artifacts."""
    import json

    from tunery.cli.client import ClientError

    try:
        with open_client() as client:
            run = client.get_run(run_id)
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    click.echo(f"{run['name']} ({run['id']})")
    for label, value in describe_run(run):
        first, *more = value.splitlines() or [""]
        click.echo(f"  {label:<10} {first}")
        for line in more:
            click.echo(f"  {'':<10} {line}")
    print_samples(run.get("samples") or [])


@runs_group.command("cancel")
@click.argument("run_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def runs_cancel(run_id: str, yes: bool) -> None:
    """Stop a run now; billed for whole minutes of training so far."""
    from tunery.cli.client import ClientError

    try:
        with open_client() as client:
            run = client.get_run(run_id)
            if not yes and run["status"] not in ("completed", "failed", "cancelled"):
                try:
                    confirmed = click.confirm(
                        CANCEL_PROMPT.format(name=run["name"]),
                        default=False,
                        prompt_suffix=" ",
                        err=True,
                    )
                except click.Abort:
                    confirmed = False
                if not sys.stdin.isatty():
                    click.echo("", err=True)  # the answer was not echoed
                if not confirmed:
                    click.echo(
                        f"not cancelled; run {run['name']} is still {run['status']} "
                        "(pass --yes to cancel without asking)",
                        err=True,
                    )
                    sys.exit(EXIT_FAILED)
            run = client.cancel_run(run["id"])
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    credits = (run.get("metrics") or {}).get("credits")
    billed = f" · billed {credits:.2f} credits" if credits is not None else ""
    click.echo(f"{pill(run['status'])} {run['name']} ({run['id']}){billed}")


class RunWatcher:
    """Renders a run's event stream like TerminalReporter renders a local run.

    States and phases as lines, log lines indented, a progress bar of the step budget with
    the Run panel numbers; all on stderr, so stdout keeps only the outcome and samples.
    """

    def __init__(self) -> None:
        self._bar: Any = None
        self.status: str | None = None
        self.phase: str | None = None

    def handle(self, event: SseEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "status":
            self._status(data)
        elif event.event == "phase":
            self._phase(data.get("phase", ""))
        elif event.event == "log":
            self._log(str(data.get("message", "")))
        elif event.event == "metrics":
            self._metrics(data)

    def _status(self, data: dict[str, Any]) -> None:
        self._close_bar()
        self.status = data.get("status")
        self.phase = data.get("phase")
        line = f"{pill(self.status or '?')}  ({self.status})"
        if self.phase and self.phase not in (self.status, "done", "cancelled"):
            line += f" · {self.phase.replace('_', ' ')}"
        click.echo(line, err=True)
        error = data.get("error") or {}
        if self.status == "retrying" and error.get("message"):
            click.echo(f"  {error['message']}", err=True)

    def _phase(self, phase: str) -> None:
        self._close_bar()
        self.phase = phase
        click.echo(f"▸ {phase.replace('_', ' ')}", err=True)

    def _log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(f"  {message}", file=sys.stderr)
        else:
            click.echo(f"  {message}", err=True)

    def _metrics(self, metrics: dict[str, Any]) -> None:
        from tqdm import tqdm

        step, total = int(metrics.get("step") or 0), int(metrics.get("total_steps") or 0)
        if not total:
            return
        if self._bar is not None and (self._bar.total != total or step < self._bar.n):
            self._close_bar()  # a retried attempt resumed from an earlier checkpoint
        if self._bar is None:
            self._bar = tqdm(
                total=total,
                initial=max(step - 1, 0),
                unit="step",
                file=sys.stderr,
                bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {desc}",
                dynamic_ncols=True,
            )
        self._bar.set_description_str(panel_numbers(metrics), refresh=False)
        self._bar.update(step - self._bar.n)
        if step >= total:
            self._close_bar()

    def reconnecting(self, problem: ClientError, delay: float) -> None:
        self._log(f"(lost the event stream: {problem.message}; reconnecting in {delay:.0f} s)")

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@runs_group.command("watch")
@click.argument("run_id", metavar="ID")
def runs_watch(run_id: str) -> None:
    """Follow a run live until it ends: states, phases, logs and a progress bar.

    Exits 0 when the run completed, 1 when it failed, 130 when it was cancelled.
    """
    from tunery.cli.client import ClientError

    watcher = RunWatcher()
    try:
        with open_client() as client:
            run = client.get_run(run_id)
            where = f" · position {run['queue_position']}" if run.get("queue_position") else ""
            click.echo(f"watching {run['name']} ({run['id']}) · tier {run.get('tier')}{where}")
            for event in client.follow_events(run["id"], on_reconnect=watcher.reconnecting):
                watcher.handle(event)
            watcher.close()
            run = client.get_run(run["id"])
    except ClientError as error:
        watcher.close()
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        watcher.close()
        click.echo(
            f"\nstopped watching; the run goes on (`tunery runs cancel {run_id}` stops it)",
            err=True,
        )
        sys.exit(EXIT_CANCELLED)
    report_run_outcome(run)


def report_run_outcome(run: dict[str, Any]) -> None:
    """The end of a watched run: numbers and samples on stdout, the exit code by status."""
    metrics = run.get("metrics") or {}
    status = run["status"]
    steps = f"{metrics.get('step') or 0} steps"
    summary = (
        f"{pill(status)} {run['name']} · {steps} in "
        f"{format_duration(metrics.get('duration_seconds'))}"
    )
    numbers = panel_numbers(metrics, with_eta=False)
    click.echo(f"{summary} · {numbers}" if numbers else summary)
    print_samples(run.get("samples") or [])
    artifacts = run.get("artifacts") or {}
    files = [name for name in (artifacts.get("lora"), artifacts.get("gguf")) if name]
    if files:
        click.echo(f"\nartifacts: {', '.join(files)}")
    if status == "failed":
        error = run.get("error") or {}
        click.echo(f"error: {error.get('message') or 'the run failed'}", err=True)
        if error.get("hint"):
            click.echo(f"hint: {error['hint']}", err=True)
        sys.exit(EXIT_FAILED)
    if status == "cancelled":
        click.echo(f"cancelled: run {run['name']} was stopped by its owner", err=True)
        sys.exit(EXIT_CANCELLED)


@cli.group("hub")
def hub_group() -> None:
    """Hub entries: the artifacts of finished runs (uses TUNERY_URL, TUNERY_TOKEN)."""


@hub_group.command("list")
def hub_list() -> None:
    """Hub entries with their artifacts and sizes, newest first."""
    from tunery.cli.client import ClientError

    try:
        with open_client() as client:
            entries = client.json("GET", "/api/v1/hub", retry=True)
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    if not entries:
        click.echo("the Hub is empty: artifacts appear when a run saves its adapter", err=True)
        return
    for entry in entries:
        artifacts = ", ".join(
            f"{kind} {info['size'] / 2**20:.1f} MiB" for kind, info in entry["artifacts"].items()
        )
        click.echo(f"{entry['id']}  {entry['name']:<24} {entry['base_model']:<32} {artifacts}")


@hub_group.command("download")
@click.argument("entry_id", metavar="ENTRY")
@click.option("--artifact", type=click.Choice(["lora", "gguf"]), required=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Folder to save the ZIP in (default: here).",
)
def hub_download(entry_id: str, artifact: str, out_dir: Path) -> None:
    """Download an artifact through a fresh signed URL; checks its size and SHA-256."""
    import hashlib

    import httpx

    from tunery.cli.client import ClientError

    try:
        with open_client() as client:
            entry = client.json("GET", f"/api/v1/hub/{entry_id}", retry=True)
            signed = client.json(
                "POST", f"/api/v1/hub/{entry_id}/artifacts/{artifact}/url", retry=True
            )
    except ClientError as error:
        report_client_error(error)
        sys.exit(EXIT_FAILED)
    info = entry["artifacts"][artifact]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(info["filename"]).name
    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", signed["url"], timeout=60) as response:
            if response.status_code != 200:
                click.echo(f"error: download failed with HTTP {response.status_code}", err=True)
                sys.exit(EXIT_FAILED)
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    file.write(chunk)
        if digest.hexdigest() != info["sha256"] or partial.stat().st_size != info["size"]:
            click.echo(
                "error: the downloaded file does not match its checksum; try again", err=True
            )
            sys.exit(EXIT_FAILED)
        partial.replace(target)
    except httpx.HTTPError as error:
        click.echo(f"error: download interrupted: {error}", err=True)
        sys.exit(EXIT_FAILED)
    finally:
        partial.unlink(missing_ok=True)
    click.echo(str(target))


def _register_admin() -> None:
    from tunery.cli.admin import accounts

    cli.add_command(accounts)


_register_admin()
