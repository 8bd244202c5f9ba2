"""The control plane's tables (SQLAlchemy 2), on SQLite by default.

Times are UTC epoch seconds (floats). Ids are opaque strings with a type prefix
(``run_``, ``ds_``, ``att_``…). ``runs.status`` is written by ``tunery.runs.store`` only.
The schema is made by the migrations in ``tunery.migrations``: a change to a model here needs
a revision there (a test compares the two).
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tunery import migrations


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    token_hash: Mapped[str] = mapped_column(String, unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String)
    filename: Mapped[str] = mapped_column(String)
    format: Mapped[str] = mapped_column(String)
    rows: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String, index=True)
    phase: Mapped[str] = mapped_column(String)
    tier: Mapped[str] = mapped_column(String)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    retry_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    samples: Mapped[list[Any]] = mapped_column(JSON, default=list)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    hub_entry_id: Mapped[str | None] = mapped_column(String, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String, nullable=True)
    idempotency_payload_hash: Mapped[str | None] = mapped_column(String, nullable=True)
    """SHA-256 of the payload the key was first used with; a different payload is refused."""
    finish_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    """"Finish now": training stops at the next step, then the run saves, exports, samples."""
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The estimate at submission (``wire.rest.RunEstimate``), kept to compare with the run."""
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The latest evaluation, the best one, and whether early stopping ended the run."""
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    """The owner's labels, editable at any time (``tunery.runs.annotations``)."""
    note: Mapped[str] = mapped_column(String, default="", server_default="")
    """The owner's free-text note, editable at any time."""
    __table_args__ = (UniqueConstraint("account_id", "idempotency_key"),)


class Attempt(Base):
    """One try at a run on one node; its token fences writes from stale attempts.

    Only the token's SHA-256 is stored (``token_hash``): the database gives no one a token.
    ``node`` is "" until a cluster placed the attempt; ``waiting_reason`` says why a
    cluster has not placed it yet.
    """

    __tablename__ = "attempts"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String, index=True)
    token_hash: Mapped[str] = mapped_column(String)
    waiting_reason: Mapped[str | None] = mapped_column(String, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    process_started: Mapped[str | None] = mapped_column(String, nullable=True)
    lease_expires_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float, default=now)
    training_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String, nullable=True)


class RunEvent(Base):
    """Append-only history of a run; ``id`` orders events and is the SSE event id."""

    __tablename__ = "run_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    kind: Mapped[str] = mapped_column(String)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    # AUTOINCREMENT: ids are never reused, even after the newest run's events are deleted
    # with its record; a stream's Last-Event-ID cursor would otherwise skip the next ones.
    __table_args__ = (
        Index("ix_run_events_run_id_id", "run_id", "id"),
        {"sqlite_autoincrement": True},
    )


class HubEntry(Base):
    """Artifacts of one run; outlives the run record until deleted itself."""

    __tablename__ = "hub_entries"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    run_id: Mapped[str] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    base_model: Mapped[str] = mapped_column(String)
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class LedgerEntry(Base):
    """Append-only credit movements; an account's balance is the sum of its amounts."""

    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    run_id: Mapped[str | None] = mapped_column(String, nullable=True)
    kind: Mapped[str] = mapped_column(String)  # grant | charge | refund
    amount: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(String, default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)


class FineTuningJob(Base):
    """What an OpenAI-style job adds to its run (``/v1/fine_tuning/jobs``); one row per run."""

    __tablename__ = "fine_tuning_jobs"
    # No foreign key: deleting a run's record (``settle.delete_run``) leaves this row inert.
    run_id: Mapped[str] = mapped_column(String, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    suffix: Mapped[str | None] = mapped_column(String, nullable=True)
    validation_file: Mapped[str | None] = mapped_column(String, nullable=True)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class WebhookEndpoint(Base):
    """A URL an account registered for job notifications, with its signing secret."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(String)
    secret: Mapped[str] = mapped_column(String)
    event_types: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class WebhookDelivery(Base):
    """One event for one endpoint, and how its delivery went (retried with back-off)."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    """The Standard Webhooks message id (``webhook-id``), the same on every retry."""
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    source_event_id: Mapped[int | None] = mapped_column(Integer, index=True, nullable=True)
    """The run event announced; None for a test event the account asked for."""
    event_type: Mapped[str] = mapped_column(String)
    payload: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String, index=True)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (UniqueConstraint("endpoint_id", "source_event_id"),)


def make_engine(path: Path) -> Engine:
    """An engine for the database at ``path``, created or upgraded to the newest schema first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Owner-only from the first byte: SQLite gives its -wal and -shm files the same mode.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)
    migrations.upgrade(path)
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        # WAL: readers (event streams) never block the writer; FULL sync survives power loss.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
