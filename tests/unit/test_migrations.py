"""Migrations: every data dir, fresh or made by an older release, opens at the newest schema
with all its rows, and the migrations never drift from the models."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, select

from tunery.db import (
    Account,
    ApiToken,
    Attempt,
    Base,
    Dataset,
    HubEntry,
    LedgerEntry,
    Run,
    RunEvent,
    make_engine,
    make_sessions,
)
from tunery.migrations import SCRIPTS

# The schema as the last release without migrations (commit 5c9f119) created it.
RELEASE_5C9F119 = """
CREATE TABLE accounts (
    id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    is_admin BOOLEAN NOT NULL,
    created_at FLOAT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (name)
);
CREATE TABLE api_tokens (
    id VARCHAR NOT NULL,
    account_id VARCHAR NOT NULL,
    token_hash VARCHAR NOT NULL,
    created_at FLOAT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(account_id) REFERENCES accounts (id),
    UNIQUE (token_hash)
);
CREATE TABLE datasets (
    id VARCHAR NOT NULL,
    account_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    filename VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 VARCHAR NOT NULL,
    created_at FLOAT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(account_id) REFERENCES accounts (id)
);
CREATE INDEX ix_datasets_account_id ON datasets (account_id);
CREATE TABLE runs (
    id VARCHAR NOT NULL,
    account_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    phase VARCHAR NOT NULL,
    tier VARCHAR NOT NULL,
    config JSON NOT NULL,
    created_at FLOAT NOT NULL,
    started_at FLOAT,
    finished_at FLOAT,
    attempt INTEGER NOT NULL,
    retry_at FLOAT,
    cancel_requested BOOLEAN NOT NULL,
    error JSON,
    metrics JSON NOT NULL,
    samples JSON NOT NULL,
    summary JSON,
    hub_entry_id VARCHAR,
    idempotency_key VARCHAR,
    PRIMARY KEY (id),
    UNIQUE (account_id, idempotency_key),
    FOREIGN KEY(account_id) REFERENCES accounts (id)
);
CREATE INDEX ix_runs_account_id ON runs (account_id);
CREATE INDEX ix_runs_status ON runs (status);
CREATE TABLE hub_entries (
    id VARCHAR NOT NULL,
    account_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    base_model VARCHAR NOT NULL,
    artifacts JSON NOT NULL,
    created_at FLOAT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(account_id) REFERENCES accounts (id)
);
CREATE INDEX ix_hub_entries_account_id ON hub_entries (account_id);
CREATE TABLE ledger (
    id INTEGER NOT NULL,
    account_id VARCHAR NOT NULL,
    run_id VARCHAR,
    kind VARCHAR NOT NULL,
    amount FLOAT NOT NULL,
    note VARCHAR NOT NULL,
    created_at FLOAT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(account_id) REFERENCES accounts (id)
);
CREATE INDEX ix_ledger_account_id ON ledger (account_id);
CREATE TABLE attempts (
    id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    number INTEGER NOT NULL,
    node VARCHAR NOT NULL,
    token VARCHAR NOT NULL,
    active BOOLEAN NOT NULL,
    pid INTEGER,
    process_started VARCHAR,
    lease_expires_at FLOAT NOT NULL,
    started_at FLOAT NOT NULL,
    training_started_at FLOAT,
    ended_at FLOAT,
    end_reason VARCHAR,
    PRIMARY KEY (id),
    FOREIGN KEY(run_id) REFERENCES runs (id)
);
CREATE INDEX ix_attempts_active ON attempts (active);
CREATE INDEX ix_attempts_run_id ON attempts (run_id);
CREATE INDEX ix_attempts_node ON attempts (node);
CREATE TABLE run_events (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    data JSON NOT NULL,
    created_at FLOAT NOT NULL,
    FOREIGN KEY(run_id) REFERENCES runs (id)
);
CREATE INDEX ix_run_events_run_id ON run_events (run_id);
CREATE INDEX ix_run_events_run_id_id ON run_events (run_id, id);
"""

ROWS: dict[type[Base], list[dict[str, Any]]] = {
    Account: [
        {"id": "acc_admin", "name": "admin", "is_admin": True, "created_at": 10.0},
        {"id": "acc_ana", "name": "ana", "is_admin": False, "created_at": 11.0},
    ],
    ApiToken: [
        {"id": "tok_1", "account_id": "acc_admin", "token_hash": "f" * 64, "created_at": 12.0}
    ],
    Dataset: [
        {
            "id": "ds_1",
            "account_id": "acc_ana",
            "name": "support",
            "filename": "support.jsonl",
            "format": "jsonl",
            "rows": 40,
            "bytes": 12345,
            "sha256": "a" * 64,
            "created_at": 13.0,
        }
    ],
    Run: [
        {
            "id": "run_done",
            "account_id": "acc_ana",
            "name": "support-bot",
            "status": "completed",
            "phase": "done",
            "tier": "cpu",
            "config": {"base_model": "tunery/demo-tiny", "dataset_ids": ["ds_1"]},
            "created_at": 14.0,
            "started_at": 15.0,
            "finished_at": 90.0,
            "attempt": 1,
            "retry_at": None,
            "cancel_requested": False,
            "error": None,
            "metrics": {"loss": [2.5, 1.25]},
            "samples": [{"prompt": "hi", "completion": "hello"}],
            "summary": {"steps": 30},
            "hub_entry_id": "hub_1",
            "idempotency_key": "key-1",
        },
        {
            "id": "run_retrying",
            "account_id": "acc_ana",
            "name": "second",
            "status": "retrying",
            "phase": "training",
            "tier": "cpu",
            "config": {"base_model": "tunery/demo-tiny", "dataset_ids": ["ds_1"]},
            "created_at": 16.0,
            "started_at": 17.0,
            "finished_at": None,
            "attempt": 1,
            "retry_at": 95.0,
            "cancel_requested": True,
            "error": {"code": "transient", "message": "node lost", "hint": ""},
            "metrics": {},
            "samples": [],
            "summary": None,
            "hub_entry_id": None,
            "idempotency_key": None,
        },
    ],
    Attempt: [
        {
            "id": "att_1",
            "run_id": "run_done",
            "number": 1,
            "node": "local-0",
            "token": "fence",
            "active": False,
            "pid": 4242,
            "process_started": "12345",
            "lease_expires_at": 80.0,
            "started_at": 15.0,
            "training_started_at": 20.0,
            "ended_at": 90.0,
            "end_reason": "completed",
        }
    ],
    RunEvent: [
        {
            "id": 1,
            "run_id": "run_done",
            "kind": "status",
            "data": {"to": "running"},
            "created_at": 15.0,
        },
        {
            "id": 2,
            "run_id": "run_done",
            "kind": "log",
            "data": {"message": "step"},
            "created_at": 21.0,
        },
        {"id": 7, "run_id": "run_retrying", "kind": "status", "data": {}, "created_at": 92.0},
    ],
    HubEntry: [
        {
            "id": "hub_1",
            "account_id": "acc_ana",
            "run_id": "run_done",
            "name": "support-bot",
            "base_model": "tunery/demo-tiny",
            "artifacts": {"adapter": {"bytes": 100, "sha256": "b" * 64}},
            "created_at": 91.0,
        }
    ],
    LedgerEntry: [
        {
            "id": 1,
            "account_id": "acc_ana",
            "run_id": None,
            "kind": "grant",
            "amount": 100.0,
            "note": "welcome grant",
            "created_at": 11.0,
        },
        {
            "id": 2,
            "account_id": "acc_ana",
            "run_id": "run_done",
            "kind": "charge",
            "amount": -1.25,
            "note": "",
            "created_at": 90.0,
        },
    ],
}


def upgraded(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as the newest schema holds it: attempt tokens hashed since 0003."""
    if "token" not in row:
        return row
    row = {key: value for key, value in row.items() if key != "token"}
    return {**row, "token_hash": hashlib.sha256(b"fence").hexdigest(), "waiting_reason": None}


def release_database(path: Path) -> None:
    """A database as release 5c9f119 left it, holding ROWS."""
    connection = sqlite3.connect(path)
    try:
        connection.executescript(RELEASE_5C9F119)
        for model, rows in ROWS.items():
            for row in rows:
                values = [
                    json.dumps(value) if isinstance(value, dict | list) else value
                    for value in row.values()
                ]
                connection.execute(
                    f"INSERT INTO {model.__tablename__} ({', '.join(row)}) "
                    f"VALUES ({', '.join('?' for _ in row)})",
                    values,
                )
        connection.commit()
    finally:
        connection.close()


def version(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        connection.close()


def schema_drift(path: Path) -> list[Any]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()


HEAD = ScriptDirectory(str(SCRIPTS)).get_current_head()


def test_a_release_database_is_upgraded_with_every_row(tmp_path: Path) -> None:
    database = tmp_path / "tunery.db"
    release_database(database)
    engine = make_engine(database)
    try:
        with make_sessions(engine)() as session:
            for model, rows in ROWS.items():
                stored = session.scalars(select(model).order_by(model.id)).all()
                assert len(stored) == len(rows), model.__tablename__
                for item, row in zip(stored, rows, strict=True):
                    expected = upgraded(row)
                    assert {key: getattr(item, key) for key in expected} == expected
    finally:
        engine.dispose()
    assert version(database) == HEAD
    assert schema_drift(database) == []


def test_a_fresh_data_dir_reaches_head_and_matches_the_models(tmp_path: Path) -> None:
    database = tmp_path / "state" / "tunery.db"
    make_engine(database).dispose()
    assert version(database) == HEAD
    assert schema_drift(database) == []


def test_upgrading_again_changes_nothing(tmp_path: Path) -> None:
    database = tmp_path / "tunery.db"
    release_database(database)
    make_engine(database).dispose()
    before = database.read_bytes()
    make_engine(database).dispose()
    assert database.read_bytes() == before
    assert version(database) == HEAD


@pytest.mark.parametrize("made_by", ["fresh", "release"])
def test_servers_starting_together_upgrade_once(tmp_path: Path, made_by: str) -> None:
    database = tmp_path / "tunery.db"
    if made_by == "release":
        release_database(database)
    opener = "import sys, pathlib, tunery.db; tunery.db.make_engine(pathlib.Path(sys.argv[1]))"
    starts = [subprocess.Popen([sys.executable, "-c", opener, str(database)]) for _ in range(4)]
    assert [start.wait(timeout=60) for start in starts] == [0, 0, 0, 0]
    assert version(database) == HEAD
    assert schema_drift(database) == []
