"""What the terminal shows: numbers, status pills, tables, samples, errors, and the progress bar.

Progress, phases and log lines go to stderr, so stdout keeps only what a script reads: ids,
paths, tables, outcomes and samples. Every command exits ``EXIT_FAILED`` when it failed and
``EXIT_CANCELLED`` (the shell's code for Ctrl-C) when a run was cancelled.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click

from tunery.errors import ConfigError, DatasetError, TuneryError
from tunery.lifecycle import STATUS_DISPLAY, RunStatus, status_label
from tunery.pipeline.reporting import current_epoch

if TYPE_CHECKING:
    from tqdm import tqdm

    from tunery.cli.client import ClientError

EXIT_FAILED = 1
EXIT_CANCELLED = 130

# Labels and icon names come from the status vocabulary; how an icon is drawn and each
# status's colour belong to the terminal.
ICON_GLYPHS = {
    "clock": "◷",
    "spinner": "◌",
    "refresh": "↻",
    "check": "✓",
    "cross": "✗",
    "square": "■",
    "pause": "‖",
}
STATUS_COLORS: dict[RunStatus, str | int] = {
    RunStatus.QUEUED: "bright_black",
    RunStatus.WAITING_FOR_GPU: "magenta",
    RunStatus.TRAINING: "blue",
    RunStatus.RETRYING: "yellow",
    RunStatus.PAUSED: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: 208,  # orange, which has no name among the 16 basic colours
}


def pill(status: str, phase: str | None = None) -> str:
    """The status as the Run panel's coloured pill, e.g. ``✓ Completed``; with the run's
    ``phase``, ``◌ Loading model`` rather than ``◌ Waiting for GPU`` once a node loads it."""
    try:
        known = RunStatus(status)
    except ValueError:
        return click.style(f"? {status}", bold=True)
    glyph = ICON_GLYPHS.get(STATUS_DISPLAY[known].icon, "?")
    label = status_label(known, phase)
    return click.style(f"{glyph} {label}", fg=STATUS_COLORS[known], bold=True)


# Numbers -------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``M:SS`` or ``H:MM:SS``; ``estimating…`` while unknown."""
    if seconds is None:
        return "estimating…"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


def format_time(value: str | float | None) -> str:
    """An API timestamp (ISO 8601 or epoch seconds) in local time, to the second."""
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
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def epoch_label(metrics: Mapping[str, Any]) -> str | None:
    """The epoch in progress as the Run panel's "X/Y", or None before the first step.

    Run objects carry ``current_epoch``; step events (and older servers) carry only the
    fractional ``epoch``, from which the wire format's rule derives it.
    """
    epochs = metrics.get("epochs")
    current = metrics.get("current_epoch")
    if current is None:
        current = current_epoch(metrics.get("epoch"), epochs)
    return f"{current}/{epochs}" if current is not None and epochs else None


def panel_numbers(metrics: Mapping[str, Any], *, live: bool = True) -> str:
    """``epoch X/Y · loss L · N tok/s · ETA T · credits C``, as far as they are known.

    ``live`` adds the speed and the ETA, which mean nothing once a run has ended.
    """
    parts = []
    epoch = epoch_label(metrics)
    if epoch:
        parts.append(f"epoch {epoch}")
    if metrics.get("loss") is not None:
        parts.append(f"loss {metrics['loss']:.4f}")
    if metrics.get("reward_margin") is not None:  # DPO runs
        parts.append(f"margin {metrics['reward_margin']:.3f}")
    if metrics.get("reward_accuracy") is not None:
        parts.append(f"reward acc {100 * metrics['reward_accuracy']:.0f}%")
    if live and metrics.get("tokens_per_second") is not None:
        parts.append(f"{metrics['tokens_per_second']:,.0f} tok/s")
    if live:
        parts.append(f"ETA {format_duration(metrics.get('eta_seconds'))}")
    if metrics.get("credits") is not None:
        parts.append(f"credits {metrics['credits']:.2f}")
    return " · ".join(parts)


def eval_line(evaluation: Mapping[str, Any]) -> str:
    """``eval loss L · accuracy A% · best B at step S`` for one evaluation (a DPO run's: its
    reward margin and reward accuracy instead of the token accuracy)."""
    parts = [f"step {evaluation.get('step')}: eval loss {evaluation['eval_loss']:.4f}"]
    if evaluation.get("eval_accuracy") is not None:
        parts.append(f"token accuracy {100 * evaluation['eval_accuracy']:.1f}%")
    if evaluation.get("eval_reward_margin") is not None:
        parts.append(f"reward margin {evaluation['eval_reward_margin']:.3f}")
    if evaluation.get("eval_reward_accuracy") is not None:
        parts.append(f"reward accuracy {100 * evaluation['eval_reward_accuracy']:.1f}%")
    if evaluation.get("best_eval_loss") is not None:
        parts.append(f"best {evaluation['best_eval_loss']:.4f} at step {evaluation['best_step']}")
    return " · ".join(parts)


# Tables and samples ----------------------------------------------------------------------


def kind_label(dataset: Mapping[str, Any]) -> str:
    """What a dataset trains, in words: ``chat rows (sft)`` or ``preference pairs (dpo)``."""
    if dataset.get("kind") == "preference":
        return "preference pairs (dpo)"
    return "chat rows (sft)"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def print_samples(samples: list[dict[str, Any]]) -> None:
    """The smoke-test generations on stdout: tuned, base and reference answers side by side.

    A reply that ran out of tokens, or is empty, is flagged.
    """
    for index, sample in enumerate(samples, start=1):
        click.echo(f"\nsample {index}: {sample.get('prompt', '')}")
        click.echo(f"  tuned    → {_reply(sample.get('response'), sample.get('stopped'))}")
        if "base_response" in sample:
            click.echo(f"  base     → {_reply(sample['base_response'], None)}")
        if sample.get("expected") is not None:
            click.echo(f"  expected → {sample['expected']}")


def _reply(text: str | None, stopped: bool | None) -> str:
    if not text:
        return "[empty reply]"
    return f"{text}  [did not stop]" if stopped is False else text


def artifact_files(run: Mapping[str, Any]) -> list[str]:
    """The file names of a run's bundles, LoRA first."""
    artifacts = run.get("artifacts") or {}
    return [name for name in (artifacts.get("lora"), artifacts.get("gguf")) if name]


ESTIMATE_SOURCES = {
    "measured": "measured on earlier runs on this tier",
    "calibrated": "from the tier's benchmark of the model's shape",
    "prior": "assumed from the tier's FLOPs (nothing measured yet)",
}


def print_estimate(estimate: dict[str, Any]) -> None:
    """The estimate on stdout, one fact a line."""
    seconds = estimate.get("seconds")
    source = ESTIMATE_SOURCES.get(estimate.get("throughput_source") or "", "unknown")
    phases = estimate.get("phases") or {}
    parts = ", ".join(f"{phase} {format_duration(value)}" for phase, value in phases.items())
    lines = [
        f"examples    {estimate['examples']} of {estimate['rows']} rows "
        f"({estimate['validation_examples']} for validation)",
        f"tokens      ~{estimate['tokens']:,} ({estimate['tokens_per_epoch']:,} per epoch)",
        f"steps       {estimate['total_steps']} ({estimate['epochs']} epoch(s))",
        f"billed      ~{format_duration(seconds) if seconds is not None else 'unknown'} "
        f"on {estimate['tier']} ({source})",
    ]
    if parts:
        lines.append(f"            {parts}")
    if estimate.get("startup_seconds") is not None:
        lines.append(
            f"startup     ~{format_duration(estimate['startup_seconds'])} to the first step "
            "(not billed)"
        )
    if estimate.get("credits") is not None:
        covered = "covered" if estimate.get("covered") else "NOT covered"
        lines.append(
            f"credits     ~{estimate['credits']:.2f} at {estimate['credits_per_minute']:g}/min; "
            f"balance {estimate['balance']:.2f} ({covered})"
        )
    if estimate.get("peak_memory_gib") is not None:
        lines.append(
            f"memory      ~{estimate['peak_memory_gib']:g} GiB peak of the card's "
            f"{estimate['gpu_memory_gib']:g} GiB"
        )
    lines += [f"note        {note}" for note in estimate.get("notes") or []]
    lines += [
        f"warning     {warning['field']}: {warning['message']}"
        for warning in estimate.get("warnings") or []
    ]
    click.echo("\n".join(lines))


def evaluation_lines(run: dict[str, Any]) -> list[tuple[str, str]]:
    """Eval loss, the early stop, and the estimate beside the actual time."""
    lines = []
    evaluation = run.get("evaluation") or {}
    if evaluation.get("eval_loss") is not None:
        lines.append(("eval", eval_line(evaluation)))
    if evaluation.get("stopped_early"):
        lines.append(
            (
                "stopped",
                f"early at step {evaluation.get('stopped_at_step')}: the eval loss stopped "
                f"improving; the adapter of step {evaluation.get('best_step')} (the best) is kept",
            )
        )
    estimate = run.get("estimate") or {}
    check = run.get("estimate_check")
    if check:
        lines += estimate_check_lines(check)
    elif estimate.get("seconds") is not None:
        lines.append(("estimate", f"{format_duration(estimate['seconds'])} billed, estimated"))
    return lines


def estimate_check_lines(check: dict[str, Any]) -> list[tuple[str, str]]:
    """A completed run's estimate beside what it took (``RunPublic.estimate_check``)."""

    def pair(estimated: float | None, actual: float | None, ratio: float | None, fmt: Any) -> str:
        text = f"{fmt(estimated) if estimated is not None else 'unknown'} estimated, "
        text += f"{fmt(actual) if actual is not None else 'unknown'} actual"
        return f"{text} ({ratio:.2f}×)" if ratio is not None else text

    lines = [
        (
            "billed",
            pair(
                check["estimated_seconds"],
                check["actual_seconds"],
                check["seconds_ratio"],
                format_duration,
            ),
        ),
        (
            "credits",
            pair(
                check["estimated_credits"],
                check["actual_credits"],
                check["credits_ratio"],
                lambda value: f"{value:.2f}",
            ),
        ),
    ]
    if check.get("actual_startup_seconds") is not None:
        lines.append(
            (
                "startup",
                pair(
                    check["estimated_startup_seconds"],
                    check["actual_startup_seconds"],
                    check["startup_ratio"],
                    format_duration,
                ),
            )
        )
    source = ESTIMATE_SOURCES.get(check.get("source") or "", "unknown")
    lines.append(("estimate", f"was {source}"))
    return lines


# Errors --------------------------------------------------------------------------------


def fail(message: str, *, hint: str = "", problems: list[str] | None = None) -> NoReturn:
    """``error:``, each problem, ``hint:`` on stderr; then exit ``EXIT_FAILED``."""
    click.echo(f"error: {message}", err=True)
    for problem in problems or []:
        click.echo(f"  - {problem}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(EXIT_FAILED)


def fail_with(error: TuneryError | ClientError) -> NoReturn:
    """Report an error of this process or of the server, and exit ``EXIT_FAILED``.

    A list of problems is shown when it says more than the message: several of them, or
    one the message does not already contain.
    """
    if isinstance(error, ConfigError | DatasetError):
        problems = [str(problem) for problem in error.problems]
    else:
        problems = list(getattr(error, "problems", []))
    if len(problems) == 1 and problems[0] in error.message:
        problems = []
    fail(error.message, hint=error.hint, problems=problems)


# The progress bar ------------------------------------------------------------------------


class StepProgress:
    """Phase headlines, indented log lines and a progress bar of the step budget, on stderr.

    The one renderer of training progress, for a run in this process and a watched server
    run alike. The bar opens at the first step it is told of, and closes when the budget
    is done, at a headline, or when steps go back (a new attempt resumed from an earlier
    checkpoint), so it never stands still under other output.
    """

    def __init__(self) -> None:
        self._bar: tqdm | None = None

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def headline(self, text: str) -> None:
        self.close()
        click.echo(text, err=True)

    def phase(self, name: str) -> None:
        self.headline(f"▸ {name.replace('_', ' ')}")

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(f"  {message}", file=sys.stderr)
        else:
            click.echo(f"  {message}", err=True)

    def step(self, step: int, total: int, numbers: str) -> None:
        """Step ``step`` of ``total`` finished; ``numbers`` is the text after the bar."""
        if not total:
            return
        if self._bar is not None and (self._bar.total != total or step < self._bar.n):
            self.close()
        if self._bar is None:
            self._bar = _open_bar(total, initial=max(step - 1, 0))
        self._bar.set_description_str(numbers, refresh=False)
        self._bar.update(step - self._bar.n)
        if step >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _open_bar(total: int, *, initial: int) -> tqdm:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        file=sys.stderr,
        bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {desc}",
        dynamic_ncols=True,
    )
