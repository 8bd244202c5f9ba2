"""Which fine-tuned models an account may chat with, and their GGUF files on disk.

``served_gguf`` finds the GGUF of a model name (``ft:…:RUN_ID``, or the run id) of the
account and unpacks it once into ``DATA_DIR/serving/ENTRY_ID/``, with the stop strings of
its Modelfile. Loading and answering happen in serving processes (``tunery.serving``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import or_, select

from tunery.db import HubEntry, Run
from tunery.hub.storage import PresignedUrl
from tunery.lifecycle import RunStatus
from tunery.openai_api.objects import Model, OpenAIError
from tunery.runs import hub
from tunery.runs.plane import ControlPlane
from tunery.wire.model_names import fine_tuned_model_name, run_id_of_model

_STOP_LINE = re.compile(r'^PARAMETER stop "(.*)"\s*$')


@dataclass(frozen=True)
class ServedGguf:
    key: str
    """The Hub entry id: one unpacked copy and one loaded model per entry."""
    path: Path
    stops: list[str]


def served_models(plane: ControlPlane, account_id: str) -> list[Model]:
    """The account's completed runs that have a GGUF, newest first, by their model names."""
    with plane.sessions() as session:
        rows = session.execute(
            select(Run, HubEntry)
            .join(HubEntry, HubEntry.id == Run.hub_entry_id)
            .where(Run.account_id == account_id, Run.status == RunStatus.COMPLETED.value)
            .order_by(Run.created_at.desc())
        ).all()
    return [
        Model(
            id=_model_name(run),
            created=int(run.finished_at or run.created_at),
            owned_by=run.account_id,
        )
        for run, entry in rows
        if "gguf" in entry.artifacts
    ]


def delete_model(plane: ControlPlane, account_id: str, model: str) -> str:
    """Delete a fine-tuned model: its Hub entry (the LoRA and GGUF bundles) and its unpacked
    copy; returns its name. 404 (param ``model``) when the account serves no such model."""
    with plane.sessions() as session:
        run = session.scalar(
            select(Run).where(Run.id == run_id_of_model(model), Run.account_id == account_id)
        )
    served = {served.id for served in served_models(plane, account_id)}
    if run is None or run.hub_entry_id is None or _model_name(run) not in served:
        raise OpenAIError(
            404, f"The model {model!r} does not exist", param="model", code="model_not_found"
        )
    hub.delete_entry(plane, account_id=account_id, entry_id=run.hub_entry_id)  # copy included
    return _model_name(run)


def _model_name(run: Run) -> str:
    return fine_tuned_model_name(run.config["base_model"], run.account_id, run.name, run.id)


def served_gguf(plane: ControlPlane, account_id: str, model: str) -> ServedGguf:
    """The unpacked GGUF behind ``model`` (a model name, run id or Hub entry id); 404
    (param ``model``) when the account has none, or its run has not completed."""
    with plane.sessions() as session:
        wanted = run_id_of_model(model)
        run = session.scalar(
            select(Run).where(
                or_(Run.id == wanted, Run.hub_entry_id == wanted), Run.account_id == account_id
            )
        )
        entry = session.get(HubEntry, run.hub_entry_id) if run and run.hub_entry_id else None
    if run is None or model not in (run.id, run.hub_entry_id, _model_name(run)):
        raise OpenAIError(
            404, f"The model {model!r} does not exist", param="model", code="model_not_found"
        )
    # Checked before the GGUF: a run still training has none yet, which is not a failed export.
    if run.status != RunStatus.COMPLETED.value:
        status = run.status.replace("_", " ")
        raise OpenAIError(
            404,
            f"The model {model!r} cannot be served: its run is {status}, and only a "
            "completed run's model answers",
            param="model",
            code="model_not_found",
        )
    if entry is None or "gguf" not in entry.artifacts:
        raise OpenAIError(
            404,
            f"The model {model!r} has no GGUF to serve: its run did not export one "
            "(export.gguf was off, or the export failed)",
            param="model",
            code="model_not_found",
        )
    folder = plane.serving_dir / entry.id
    if not (folder / "model.gguf").is_file():
        _unpack(plane, entry, folder)
    stops = (folder / "stops.txt").read_text(encoding="utf-8").splitlines()
    return ServedGguf(key=entry.id, path=folder / "model.gguf", stops=[s for s in stops if s])


def _unpack(plane: ControlPlane, entry: HubEntry, folder: Path) -> None:
    """Unpack the bundle's model.gguf and its Modelfile's stop strings, atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.id}-", dir=folder.parent))
    try:
        source = plane.storage.download_source(
            entry.id, "gguf", filename=entry.artifacts["gguf"]["filename"], lifetime=600
        )
        if isinstance(source, PresignedUrl):
            bundle = scratch / "bundle.zip"
            size = int(entry.artifacts["gguf"]["size"])
            with httpx.stream("GET", source.url, timeout=60) as response, bundle.open("wb") as out:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    if out.tell() + len(chunk) > size:  # the store sends what was stored
                        raise OpenAIError(502, "the Hub store sent more than the GGUF it holds")
                    out.write(chunk)
            source = bundle
        with zipfile.ZipFile(source) as archive:
            archive.extract("model.gguf", scratch)
            modelfile = archive.read("Modelfile").decode("utf-8")
        stops = [m.group(1) for line in modelfile.splitlines() if (m := _STOP_LINE.match(line))]
        (scratch / "stops.txt").write_text("\n".join(stops), encoding="utf-8")
        (scratch / "bundle.zip").unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another request unpacked it first
            scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
