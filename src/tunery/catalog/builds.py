"""Building the catalog models tunery makes itself, one build at a time.

``ensure_built`` is what ``tunery demo-model`` and a run naming such a model call. It holds
an exclusive lock (``flock`` on ``.FOLDER.lock`` beside the model's folder) while it builds,
so two builds started at once make one model: the second waits for the first, then finds
the model there. Builders write into a temporary folder and rename it at the end, so a
folder that exists is complete, and a failed or killed build leaves nothing behind (the
lock goes with the process).
"""

from __future__ import annotations

import fcntl
import importlib
from collections.abc import Callable
from pathlib import Path

from tunery.catalog.models import CatalogModel, is_built
from tunery.environment import resolve_data_dir


def default_model_dir(entry: CatalogModel) -> Path:
    """Where ``entry`` is built by default: ``TUNERY_DATA_DIR/models/FOLDER``."""
    assert entry.build is not None, f"{entry.id} is not built by tunery"
    return resolve_data_dir() / "models" / entry.build.folder


def ensure_built(
    entry: CatalogModel,
    target: Path,
    *,
    force: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> bool:
    """Build ``entry`` into ``target`` unless it is there (or ``force``); True if built here.

    ``on_wait`` hears why the call waits when another build of the same folder holds the
    lock; once that build ends, a model it left is used as it is, even with ``force``.
    """
    assert entry.build is not None, f"{entry.id} is not built by tunery"
    if is_built(target) and not force:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(f"another build of {entry.id} into {target} is under way; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
            if is_built(target):
                return False
        else:
            if is_built(target) and not force:
                return False
        module, function = entry.build.builder.split(":")
        getattr(importlib.import_module(module), function)(target)
    return True


def built_model_dir(entry: CatalogModel, *, on_wait: Callable[[str], None] | None = None) -> Path:
    """``entry`` in its default folder (``default_model_dir``), built there first if missing."""
    target = default_model_dir(entry)
    ensure_built(entry, target, on_wait=on_wait)
    return target
