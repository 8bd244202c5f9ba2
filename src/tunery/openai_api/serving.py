"""Serving fine-tuned models: each completed run's GGUF, loaded on demand with llama.cpp.

``served_gguf`` finds the GGUF of a model name (``ft:…:RUN_ID``, or the run id) of the
account and unpacks it once into ``DATA_DIR/serving/ENTRY_ID/``, with the stop strings of
its Modelfile. ``ModelPool`` keeps at most ``max_loaded`` models in memory, unloads those
idle for ``idle_seconds`` and lends each to one generation at a time (a llama.cpp context
is not thread-safe). The chat template is the one embedded in the GGUF, as llama.cpp reads
it; ``llama_cpp`` is imported on first load, so servers without the gguf extra start fine.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import or_, select

from tunery.db import HubEntry, Run
from tunery.hub.storage import PresignedUrl
from tunery.lifecycle import RunStatus
from tunery.openai_api.mapping import fine_tuned_model_name, run_id_of_model
from tunery.openai_api.objects import Model, OpenAIError
from tunery.runs.plane import ControlPlane

CONTEXT_TOKENS = 2048
"""The context each loaded model gets: prompt plus answer must fit."""
MAX_LOADED = 2
IDLE_SECONDS = 300.0
SWEEP_SECONDS = 30.0
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
    folder = plane.settings.data_dir / "serving" / entry.id
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
            with httpx.stream("GET", source.url, timeout=60) as response, bundle.open("wb") as out:
                response.raise_for_status()
                for chunk in response.iter_bytes():
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


@dataclass
class _Loaded:
    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)


class ModelPool:
    """At most ``max_loaded`` llama.cpp models, each lent to one generation at a time."""

    def __init__(self, *, max_loaded: int = MAX_LOADED, idle_seconds: float = IDLE_SECONDS):
        self.max_loaded = max_loaded
        self.idle_seconds = idle_seconds
        self._models: dict[str, _Loaded] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_forever, daemon=True)

    def start(self) -> None:
        self._sweeper.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for model in models:
            with model.lock:
                model.llama.close()

    @contextlib.contextmanager
    def lend(self, gguf: ServedGguf) -> Iterator[Any]:
        """The loaded model of ``gguf``, exclusively for the ``with`` block (loads it first,
        evicting the least recently used idle model when the pool is full; 429 when every
        slot is busy)."""
        with self._lock:
            loaded = self._models.get(gguf.key)
            if loaded is None:
                self._make_room()
                loaded = self._models[gguf.key] = _Loaded(llama=None)
            loaded.users += 1
        try:
            with loaded.lock:
                if loaded.llama is None:
                    loaded.llama = _load(gguf.path)
                yield loaded.llama
        finally:
            with self._lock:
                loaded.users -= 1
                loaded.last_used = time.monotonic()

    def _make_room(self) -> None:
        if len(self._models) < self.max_loaded:
            return
        idle = [(m.last_used, key) for key, m in self._models.items() if m.users == 0]
        if not idle:
            raise OpenAIError(
                429,
                f"all {self.max_loaded} model slots are busy; try again shortly",
                code="model_slots_busy",
            )
        self._unload(min(idle)[1])

    def _unload(self, key: str) -> None:
        """Drop an idle model (the caller holds ``_lock`` and saw no users)."""
        model = self._models.pop(key)
        if model.llama is not None:
            model.llama.close()

    def sweep(self) -> None:
        """Unload the models nobody used for ``idle_seconds``."""
        cutoff = time.monotonic() - self.idle_seconds
        with self._lock:
            for key in [
                k for k, m in self._models.items() if m.users == 0 and m.last_used < cutoff
            ]:
                self._unload(key)

    def _sweep_forever(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            self.sweep()


def _load(path: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=CONTEXT_TOKENS, verbose=False)
