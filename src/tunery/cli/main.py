"""The ``tunery`` command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from tunery import __version__
from tunery.errors import ConfigError, DatasetError, RunCancelled, TuneryError
from tunery.pipeline.reporting import StepMetrics, StopFlag

if TYPE_CHECKING:
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
def serve(host: str, port: int, data_dir: Path | None) -> None:
    """Run the control plane, scheduler and local node pool (SQLite + local disk)."""
    import uvicorn

    from tunery.api.app import create_app
    from tunery.server import ADMIN_TOKEN_FILE, data_dir_from, ensure_admin
    from tunery.settings import Settings

    root = data_dir_from(data_dir)
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
    app = create_app(settings, server_url=f"http://{reachable}:{port}")
    nodes = ", ".join(f"{node.name} ({node.tier})" for node in settings.nodes)
    click.echo(f"tunery serving http://{reachable}:{port} · data {root} · nodes: {nodes}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
