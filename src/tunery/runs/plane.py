"""The control-plane context every run function takes, and the errors they raise.

``ControlPlane`` carries settings, database sessions, the worker backend and the event
notifier; functions receive it as their first argument instead of reading globals.
``ControlPlane.open`` builds one on a data directory's database (for ``tunery serve``,
admin commands and tests); ``close`` releases the database.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tunery.backends.base import Backend
from tunery.db import make_engine, make_sessions
from tunery.errors import TuneryError
from tunery.hub import open_storage
from tunery.hub.storage import Storage
from tunery.runs.store import EventNotifier
from tunery.settings import Settings


class NotFound(TuneryError):
    code = "not_found"


class Conflict(TuneryError):
    code = "conflict"


class TooManyQueued(TuneryError):
    """The account already has as many queued runs as the server allows (HTTP 429)."""

    code = "too_many_queued_runs"


class QuotaExceeded(TuneryError):
    """Storing this would take the account past its storage quota (HTTP 413)."""

    code = "storage_quota_exceeded"


class StaleAttempt(TuneryError):
    """A write from an attempt that no longer owns its run (fencing)."""

    code = "stale_attempt"


@dataclass
class ControlPlane:
    settings: Settings
    sessions: sessionmaker
    backend: Backend | None
    """None in processes that never start workers (admin commands, seeding)."""
    notifier: EventNotifier
    server_url: str = ""

    def __post_init__(self) -> None:
        self.wake_scheduler = threading.Event()
        self.last_tick_at: float | None = None
        """When the scheduler last ticked (wall clock); a long gap means workers could not
        report in meanwhile."""
        self.last_sweep_at = 0.0
        """When expired run folders were last looked for (``tunery.runs.retention``)."""
        self.hub_checks: dict[tuple[str, str | None], tuple[float, str | None]] = {}
        """Recent answers to "can this Hub model be downloaded?" (``runs.intake``), by
        repository and revision: when asked, and the problem (None: it can)."""

    @classmethod
    def open(
        cls, settings: Settings, *, backend: Backend | None = None, server_url: str = ""
    ) -> ControlPlane:
        """A control plane on ``settings.database_path`` (created or upgraded on open)."""
        return cls(
            settings=settings,
            sessions=make_sessions(make_engine(settings.database_path)),
            backend=backend,
            notifier=EventNotifier(),
            server_url=server_url,
        )

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Session]:
        """A transaction that takes SQLite's write lock before its first read.

        What it checks cannot be changed by another writer before it commits, so a check
        and the write that depends on it are atomic (a submission and the deletion of its
        dataset, two uploads against one quota). Writers wait for each other (busy timeout).
        """
        with self.sessions.begin() as session:
            session.execute(text("BEGIN IMMEDIATE"))
            yield session

    def close(self) -> None:
        self.sessions.kw["bind"].dispose()

    @property
    def workers(self) -> Backend:
        """The backend; raises in a control plane opened without one."""
        if self.backend is None:
            raise RuntimeError("this control plane was opened without a worker backend")
        return self.backend

    @property
    def runs_dir(self) -> Path:
        return self.settings.data_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.settings.data_dir / "datasets"

    @property
    def serving_dir(self) -> Path:
        """Hub entries' GGUFs unpacked for chat, one folder per entry."""
        return self.settings.data_dir / "serving"

    @functools.cached_property
    def storage(self) -> Storage:
        """The Hub store the settings name, built on first use (processes that never touch
        the Hub, such as account commands, need neither boto3 nor S3 credentials)."""
        return open_storage(self.settings)

    def changed(self) -> None:
        """Something was committed: wake event streams and the scheduler."""
        self.notifier.notify()
        self.wake_scheduler.set()
