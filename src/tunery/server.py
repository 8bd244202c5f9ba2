"""``tunery serve``: the control plane, scheduler and local node pool in one process tree."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import func, select

from tunery.db import Account, make_engine, make_sessions
from tunery.runs import billing
from tunery.runs.service import ControlPlane, create_account
from tunery.runs.store import EventNotifier
from tunery.settings import Settings

ADMIN_TOKEN_FILE = "admin-token"


def ensure_admin(settings: Settings) -> str | None:
    """On first start, create the admin account; returns its token once, else None.

    The token is also written to ``DATA_DIR/admin-token`` (mode 0600) so local commands
    can find it.
    """
    engine = make_engine(settings.database_path)
    plane = ControlPlane(
        settings=settings,
        sessions=make_sessions(engine),
        backend=None,  # type: ignore[arg-type]
        notifier=EventNotifier(),
    )
    try:
        with plane.sessions() as session:
            if session.scalar(select(func.count()).select_from(Account)):
                return None
        account_id, token = create_account(plane, name="admin", is_admin=True)
        if settings.admin_grant > 0:
            with plane.sessions.begin() as session:
                billing.record(
                    session,
                    account_id=account_id,
                    kind="grant",
                    amount=settings.admin_grant,
                    note="welcome grant",
                )
    finally:
        engine.dispose()
    path = settings.data_dir / ADMIN_TOKEN_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    return token


def data_dir_from(option: Path | None) -> Path:
    root = option or Path(os.environ.get("TUNERY_DATA_DIR", "~/.tunery")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()
