"""``tunery runs``: estimate, submit, list, show, watch, finish, pause, resume and cancel runs
on a server; tag and annotate them; export their metrics and logs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tunery.cli.remote import connected
from tunery.cli.render import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    StepProgress,
    artifact_files,
    epoch_label,
    eval_line,
    evaluation_lines,
    fail,
    fail_with,
    format_duration,
    format_time,
    kind_label,
    panel_numbers,
    pill,
    print_estimate,
    print_samples,
    print_table,
)
from tunery.errors import TuneryError
from tunery.lifecycle import TERMINAL, RunStatus
from tunery.phases import Phase

if TYPE_CHECKING:
    from tunery.cli.client import Client, ClientError, SseEvent

CANCEL_PROMPT = (
    "Cancelling is not reversible; training time so far is billed in whole minutes. "
    "Cancel run {name}?"
)


@click.group("runs")
def runs_group() -> None:
    """Runs on the server: submit, list, show, watch, finish, pause, resume, cancel (TUNERY_URL,
    TUNERY_TOKEN)."""


# Submitting ----------------------------------------------------------------------------


@runs_group.command("submit")
@click.argument(
    "recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--idempotency-key",
    default=None,
    help="Submitting again with the same key returns the first run (default: one per call).",
)
@click.option(
    "--estimate",
    "estimate_only",
    is_flag=True,
    help="Print what the run would train, how long and what it would cost; submit nothing.",
)
@click.option(
    "--accept-warnings",
    is_flag=True,
    help="Submit even with settings far outside what usually works (the server names them).",
)
def runs_submit(
    recipe_path: Path, idempotency_key: str | None, estimate_only: bool, accept_warnings: bool
) -> None:
    """Upload the recipe's local datasets and queue the run; prints its id.

    With --estimate the datasets are uploaded (a later submit reuses them) and the
    estimate printed instead.
    """
    import uuid

    import yaml

    from tunery.pipeline.config import load_recipe

    try:
        recipe = load_recipe(recipe_path)
    except TuneryError as error:
        fail_with(error)
    # The payload is the file as written (the server fills in defaults), with local files
    # swapped for uploaded ids; load_recipe already proved it parses and validates.
    payload = dict(yaml.safe_load(recipe_path.read_text(encoding="utf-8")))
    payload.pop("datasets", None)
    payload["base_model"] = recipe.base_model
    if accept_warnings:
        payload["accept_warnings"] = True
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"
    with connected() as client:
        local = [Path(path) for path in recipe.datasets]
        payload["dataset_ids"] = [*recipe.dataset_ids, *upload_recipe_datasets(client, local)]
        if recipe.validation.datasets:
            validation = dict(payload.get("validation") or {})
            validation.pop("datasets", None)
            held_out = [Path(path) for path in recipe.validation.datasets]
            validation["dataset_ids"] = [
                *recipe.validation.dataset_ids,
                *upload_recipe_datasets(client, held_out),
            ]
            payload["validation"] = validation
        if estimate_only:
            print_estimate(client.estimate_run(payload))
            return
        run = client.submit_run(payload, idempotency_key=key)
    where = f", position {run['queue_position']} in the queue" if run.get("queue_position") else ""
    click.echo(
        f"submitted {run['name']}: {run['status']}{where} · tier {run.get('tier')}\n"
        f"follow it with: tunery runs watch {run['id']}",
        err=True,
    )
    click.echo(run["id"])


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
            f"({dataset['rows']} rows, {dataset['format']} format, {kind_label(dataset)})",
            err=True,
        )
        uploaded[(dataset["name"], dataset["sha256"])] = dataset["id"]
        ids.append(dataset["id"])
    return ids


# Reading -------------------------------------------------------------------------------


@runs_group.command("list")
@click.option("--tag", default=None, help="Only the runs with this tag.")
def runs_list(tag: str | None) -> None:
    """This account's runs, newest first."""
    with connected() as client:
        runs = client.list_runs()
    if not runs:
        click.echo("no runs yet: submit one with `tunery runs submit RECIPE.yaml`", err=True)
        return
    rows = []
    for run in runs:
        if tag is not None and tag not in (run.get("tags") or []):
            continue
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
                ", ".join(run.get("tags") or []) or "—",
                format_time(run.get("created_at")),
            ]
        )
    print_table(["ID", "NAME", "STATUS", "PHASE", "PROGRESS", "QUEUE", "TAGS", "CREATED"], rows)


@runs_group.command("show")
@click.argument("run_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the run object as JSON.")
@click.option(
    "--recipe",
    "as_recipe",
    is_flag=True,
    help="Print the run's recipe as YAML, to edit and submit again (attestations unset).",
)
def runs_show(run_id: str, as_json: bool, as_recipe: bool) -> None:
    """One run as the Run panel shows it: state, numbers, error, samples, artifacts."""
    import json

    import yaml

    with connected() as client:
        if as_recipe:
            recipe = client.get_run_recipe(run_id)
            click.echo(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), nl=False)
            return
        run = client.get_run(run_id)
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


def describe_run(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The Run panel as label/value lines."""
    metrics = run.get("metrics") or {}
    status = run["status"]
    state = f"{pill(status, run.get('phase'))} · {(run.get('phase') or '').replace('_', ' ')}"
    if run.get("queue_position"):
        state += f" · position {run['queue_position']} in the {run.get('tier')} queue"
    if run.get("cancel_requested") and status != RunStatus.CANCELLED:
        state += " · cancel requested"
    if run.get("finish_requested") and status not in TERMINAL:
        state += " · finishing after this step"
    if run.get("pause_requested") and status not in TERMINAL:
        state += " · pausing after this step"
    lines = [("status", state), ("tier", str(run.get("tier") or "—"))]
    if run.get("attempt", 1) > 1 or status == RunStatus.RETRYING:
        lines.append(("attempt", str(run.get("attempt"))))
    epoch = epoch_label(metrics)
    if epoch:
        lines.append(("epoch", epoch))
    if metrics.get("total_steps"):
        done = f"{metrics.get('progress') or 0:.0f}%"
        lines.append(
            ("progress", f"{done} (step {metrics.get('step') or 0}/{metrics['total_steps']})")
        )
    if metrics.get("loss") is not None:
        lines.append(("loss", f"{metrics['loss']:.4f}"))
    lines += evaluation_lines(run)
    if kept := run.get("kept"):
        numbers = [f"loss {kept['loss']:.4f}"] if kept.get("loss") is not None else []
        if kept.get("eval_loss") is not None:
            numbers.append(f"eval loss {kept['eval_loss']:.4f}")
        detail = f" ({', '.join(numbers)})" if numbers else ""
        lines.append(("kept", f"the adapter of step {kept['step']}{detail}"))
    if status == RunStatus.TRAINING:
        lines.append(("ETA", format_duration(metrics.get("eta_seconds"))))
    if metrics.get("duration_seconds") is not None:
        lines.append(("duration", format_duration(metrics["duration_seconds"])))
    if metrics.get("credits") is not None:
        lines.append(("credits", f"{metrics['credits']:.2f}"))
    lines.append(("created", format_time(run.get("created_at"))))
    for label, key in (("started", "started_at"), ("finished", "finished_at")):
        if run.get(key):
            lines.append((label, format_time(run[key])))
    error = run.get("error") or {}
    if error.get("message"):
        lines.append(("error", error["message"]))
        if error.get("hint"):
            lines.append(("hint", error["hint"]))
    if status in TERMINAL and run.get("refund_note"):
        lines.append(("refund", run["refund_note"]))
    if files := artifact_files(run):
        lines.append(("artifacts", ", ".join(files)))
    if run.get("hub_entry_id"):
        deleted = " (deleted from the Hub)" if run.get("hub_entry_deleted") else ""
        lines.append(("hub entry", run["hub_entry_id"] + deleted))
    if run.get("openai_model"):
        lines.append(("model id", run["openai_model"]))
    if run.get("tags"):
        lines.append(("tags", ", ".join(run["tags"])))
    if run.get("note"):
        lines.append(("note", run["note"]))
    return lines


@runs_group.command("metrics")
@click.argument("run_id", metavar="ID")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["csv", "jsonl"]),
    default="csv",
    show_default=True,
    help="CSV with a header line, or one JSON object per line.",
)
def runs_metrics(run_id: str, export_format: str) -> None:
    """Print the run's per-step metrics and evaluations (step, loss, token accuracy,
    learning rate, grad norm, tokens/s; DPO runs' reward margin and accuracy; eval loss and
    accuracy) to stdout."""
    with connected() as client:
        click.echo(client.run_metrics(run_id, export_format), nl=False)


@runs_group.command("logs")
@click.argument("run_id", metavar="ID")
def runs_logs(run_id: str) -> None:
    """Print the run's log: status changes, phases, log lines, every step and evaluation."""
    with connected() as client:
        click.echo(client.run_logs(run_id), nl=False)


# Annotating --------------------------------------------------------------------------------


@runs_group.command("tag")
@click.argument("run_id", metavar="ID")
@click.argument("tags", nargs=-1)
@click.option("--remove", "removed", multiple=True, help="A tag to take off (repeatable).")
def runs_tag(run_id: str, tags: tuple[str, ...], removed: tuple[str, ...]) -> None:
    """Add TAGS to a run (and take off each --remove); prints the run's tags."""
    with connected() as client:
        current = client.get_run(run_id).get("tags") or []
        wanted = [tag for tag in [*current, *tags] if tag not in removed]
        run = client.annotate_run(run_id, tags=wanted)
    click.echo(", ".join(run["tags"]) or "(no tags)")


@runs_group.command("note")
@click.argument("run_id", metavar="ID")
@click.argument("text")
def runs_note(run_id: str, text: str) -> None:
    """Set the run's note to TEXT ("" removes it)."""
    with connected() as client:
        run = client.annotate_run(run_id, note=text)
    click.echo(run["note"] or "(no note)")


# Finishing and cancelling ----------------------------------------------------------------


@runs_group.command("finish")
@click.argument("run_id", metavar="ID")
def runs_finish(run_id: str) -> None:
    """Finish now: stop training at the next step, then save, export and sample.

    Billed as a completed run; unlike cancel, the adapter is kept.
    """
    with connected() as client:
        run = client.finish_run(run_id)
    click.echo(
        f"{pill(run['status'])} {run['name']} ({run['id']}): training stops after the "
        f"current step, then the adapter is saved, exported and sampled; follow it with: "
        f"tunery runs watch {run['id']}"
    )


@runs_group.command("pause")
@click.argument("run_id", metavar="ID")
def runs_pause(run_id: str) -> None:
    """Pause: save a checkpoint after the current step, free the node, stop billing."""
    with connected() as client:
        run = client.pause_run(run_id)
    if run["status"] == RunStatus.PAUSED:
        done = "paused; resume it with"
    else:
        done = "pauses after the current step's checkpoint; resume it later with"
    click.echo(
        f"{pill(run['status'])} {run['name']} ({run['id']}): {done} tunery runs resume {run['id']}"
    )


@runs_group.command("resume")
@click.argument("run_id", metavar="ID")
def runs_resume(run_id: str) -> None:
    """Queue a paused run again; it continues from its checkpoint."""
    with connected() as client:
        run = client.resume_run(run_id)
    click.echo(
        f"{pill(run['status'])} {run['name']} ({run['id']}): continues from its checkpoint; "
        f"follow it with: tunery runs watch {run['id']}"
    )


@runs_group.command("cancel")
@click.argument("run_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def runs_cancel(run_id: str, yes: bool) -> None:
    """Stop a run now; billed for whole minutes of training so far."""
    with connected() as client:
        run = client.get_run(run_id)
        if not yes and run["status"] not in TERMINAL and not confirm_cancel(run):
            click.echo(
                f"not cancelled; run {run['name']} is still {run['status']} "
                "(pass --yes to cancel without asking)",
                err=True,
            )
            sys.exit(EXIT_FAILED)
        run = client.cancel_run(run["id"])
    credits = (run.get("metrics") or {}).get("credits")
    billed = f" · billed {credits:.2f} credits" if credits is not None else ""
    click.echo(f"{pill(run['status'])} {run['name']} ({run['id']}){billed}")


def confirm_cancel(run: dict[str, Any]) -> bool:
    """Ask on stderr, with what cancelling now would bill when the server says; no is the
    default, and so is a closed stdin."""
    bill = (run.get("metrics") or {}).get("cancel_credits")
    if bill is not None:
        click.echo(f"Cancelling now bills {bill:.2f} credits.", err=True)
    try:
        confirmed = click.confirm(
            CANCEL_PROMPT.format(name=run["name"]), default=False, prompt_suffix=" ", err=True
        )
    except click.Abort:
        confirmed = False
    if not sys.stdin.isatty():
        click.echo("", err=True)  # the answer was not echoed
    return confirmed


# Watching ------------------------------------------------------------------------------


class RunWatcher:
    """Renders a run's event stream with ``StepProgress``, as ``tunery train`` shows a run.

    Each status as a pill line, phases as headlines, log lines indented, and the progress
    bar with the Run panel numbers; all on stderr, so stdout keeps the outcome and samples.
    """

    def __init__(self, progress: StepProgress) -> None:
        self._progress = progress

    def handle(self, event: SseEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "status":
            self._status(data)
        elif event.event == "phase":
            self._progress.phase(data.get("phase", ""))
        elif event.event == "log":
            # The server renders the line when it can; older servers send the message only.
            self._progress.log(str(data.get("line") or data.get("message", "")))
        elif event.event == "metrics":
            step, total = int(data.get("step") or 0), int(data.get("total_steps") or 0)
            self._progress.step(step, total, panel_numbers(data))
        elif event.event == "evaluation" and data.get("eval_loss") is not None:
            self._progress.log(eval_line(data))

    def _status(self, data: dict[str, Any]) -> None:
        status, phase = data.get("status") or "?", data.get("phase")
        line = f"{pill(status)}  ({status})"
        if phase and phase not in (status, Phase.DONE, Phase.CANCELLED):
            line += f" · {phase.replace('_', ' ')}"
        self._progress.headline(line)
        error = data.get("error") or {}
        if status == RunStatus.RETRYING and error.get("message"):
            self._progress.log(error["message"])

    def reconnecting(self, problem: ClientError, delay: float) -> None:
        self._progress.log(
            f"(lost the event stream: {problem.message}; reconnecting in {delay:.0f} s)"
        )


@runs_group.command("watch")
@click.argument("run_id", metavar="ID")
def runs_watch(run_id: str) -> None:
    """Follow a run live until it ends: states, phases, logs and a progress bar.

    Exits 0 when the run completed, 1 when it failed, 130 when it was cancelled.
    """
    try:
        with connected() as client, StepProgress() as progress:
            run = client.get_run(run_id)
            where = f" · position {run['queue_position']}" if run.get("queue_position") else ""
            click.echo(f"watching {run['name']} ({run['id']}) · tier {run.get('tier')}{where}")
            watcher = RunWatcher(progress)
            for event in client.follow_events(run["id"], on_reconnect=watcher.reconnecting):
                watcher.handle(event)
            progress.close()
            run = client.get_run(run["id"])
    except KeyboardInterrupt:
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
    summary = (
        f"{pill(status)} {run['name']} · {metrics.get('step') or 0} steps in "
        f"{format_duration(metrics.get('duration_seconds'))}"
    )
    numbers = panel_numbers(metrics, live=False)
    click.echo(f"{summary} · {numbers}" if numbers else summary)
    for label, value in evaluation_lines(run):
        click.echo(f"{label}: {value}")
    print_samples(run.get("samples") or [])
    if files := artifact_files(run):
        click.echo(f"\nartifacts: {', '.join(files)}")
    if status == RunStatus.FAILED:
        error = run.get("error") or {}
        fail(error.get("message") or "the run failed", hint=error.get("hint") or "")
    if status == RunStatus.CANCELLED:
        click.echo(f"cancelled: run {run['name']} was stopped by its owner", err=True)
        sys.exit(EXIT_CANCELLED)
