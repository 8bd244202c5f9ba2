"""``tunery serve``: the control plane, scheduler and local node pool in one process tree."""

from __future__ import annotations

import logging
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from tunery.db import Account, Dataset, Run
from tunery.environment import resolve_data_dir
from tunery.runs.accounts import create_account, grant_credits
from tunery.runs.plane import ControlPlane
from tunery.settings import Settings

ADMIN_TOKEN_FILE = "admin-token"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """The server's log on stderr: one line per request (``api.request_log``, with its
    ``x-request-id``), and what background work warns about."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("tunery")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def ensure_admin(settings: Settings) -> str | None:
    """On first start, create the admin account; returns its token once, else None.

    The token is also written to ``DATA_DIR/admin-token`` (mode 0600) so local commands
    can find it.
    """
    plane = ControlPlane.open(settings)
    try:
        with plane.sessions() as session:
            if session.scalar(select(func.count()).select_from(Account)):
                return None
        account_id, token = create_account(plane, name="admin", is_admin=True)
        if settings.admin_grant > 0:
            grant_credits(
                plane, account_id=account_id, amount=settings.admin_grant, note="welcome grant"
            )
    finally:
        plane.close()
    path = settings.data_dir / ADMIN_TOKEN_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    return token


OWNER_ONLY = 0o077
"""The umask of a server: what it and its local workers create is the owner's alone."""


def keep_files_private() -> None:
    """Create every file and folder of this process (and the workers it starts) owner-only:
    the data dir holds every tenant's datasets, checkpoints and adapters."""
    os.umask(OWNER_ONLY)


def data_dir_from(option: Path | None) -> Path:
    """The data dir, created owner-only (0700) if missing: it holds the database, the
    signing key, the admin token and every tenant's data."""
    root = resolve_data_dir(option)
    if not root.exists():
        root.mkdir(parents=True, mode=0o700)
        root.chmod(0o700)  # mkdir's mode is filtered by the umask
    return root.resolve()


def exposure_warning(root: Path) -> str | None:
    """A warning when other users of this machine can reach into the data dir, else None."""
    mode = stat.S_IMODE(root.stat().st_mode)
    if not mode & OWNER_ONLY:
        return None
    return (
        f"warning: other users of this machine can reach {root} (mode {mode:o}), which holds "
        f"every tenant's datasets, checkpoints and adapters; run: chmod 700 {root}"
    )


DEMO_DATASET_NAME = "demo-dataset.jsonl"


DEMO_RUNS: dict[str, dict[str, Any]] = {
    "demo-tiny": {
        "name": "demo-support-bot",
        "base_model": "tunery/demo-tiny",
        "training": {
            "epochs": 3,
            "learning_rate": 2.0e-3,
            "batch_size": 8,
            "warmup_ratio": 0.05,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": 25,
        },
    },
    "smollm2-135m-instruct": {
        "name": "demo-smollm2-support-bot",
        "base_model": "tunery/smollm2-135m-instruct",
        "training": {
            "epochs": 1,
            "learning_rate": 1.0e-3,
            "batch_size": 8,
            "warmup_ratio": 0.05,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": 25,
        },
    },
}
"""The demo run on each demo model (its catalog folder), as ``examples/demo-recipe.yaml``
and ``examples/demo-real-recipe.yaml`` write them: minutes on 2 CPU cores."""


def demo_payload(dataset_id: str, tier: str | None, model: str = "demo-tiny") -> dict:
    """The demo run on ``model`` (a key of ``DEMO_RUNS``) on an uploaded demo dataset."""
    return {
        **DEMO_RUNS[model],
        "dataset_ids": [dataset_id],
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "gpu_tier": tier,
        "export": {"gguf": True},
        "attestations": {"dataset_rights": True, "model_license": True},
    }


def seed_demo(plane: ControlPlane, model: str = "demo-tiny") -> str | None:
    """Give the admin account the demo dataset and, if it has none yet, the demo run on
    ``model`` (a key of ``DEMO_RUNS``).

    Idempotent: the dataset is added once (by name) and each demo run once (by name).
    Returns the id of the run it submitted, or None.
    """
    name = DEMO_RUNS[model]["name"]
    from tunery.catalog.demo_data import write_demo_dataset
    from tunery.runs.datasets import store_dataset
    from tunery.runs.intake import estimate_submission, submit_run

    with plane.sessions() as session:
        admin = session.scalar(select(Account).where(Account.is_admin.is_(True)))
        if admin is None:
            return None
        dataset_id = session.scalar(
            select(Dataset.id).where(
                Dataset.account_id == admin.id, Dataset.name == DEMO_DATASET_NAME
            )
        )
        has_run = session.scalar(
            select(func.count())
            .select_from(Run)
            .where(Run.account_id == admin.id, Run.name == name)
        )
    if dataset_id is None:
        with tempfile.TemporaryDirectory() as scratch:
            path = write_demo_dataset(Path(scratch) / DEMO_DATASET_NAME)
            with path.open("rb") as source:
                dataset_id = store_dataset(
                    plane, account_id=admin.id, source=source, original_name=path.name
                ).id
    if has_run:
        return None
    payload = demo_payload(dataset_id, plane.workers.default_tier, model)
    # The tier benchmarks the demo model first, so even the first run's estimate is measured.
    estimate_submission(plane, account_id=admin.id, payload=payload, calibrate_now=True)
    run = submit_run(
        plane, account_id=admin.id, payload=payload, idempotency_key=f"demo-run-{model}"
    )
    return run.id
