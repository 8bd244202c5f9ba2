"""Event ids are never reused: a stream's Last-Event-ID cursor must not skip new events
after the newest run (and its events) was deleted — in new and in older databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tunery.db import make_engine

# run_events as databases made before AUTOINCREMENT have it.
OLD_RUN_EVENTS = """
CREATE TABLE run_events (
    id INTEGER NOT NULL PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    data JSON NOT NULL,
    created_at FLOAT NOT NULL
)
"""


def add_event(database: Path, run_id: str) -> int:
    connection = sqlite3.connect(database)
    try:
        cursor = connection.execute(
            "INSERT INTO run_events (run_id, kind, data, created_at) VALUES (?, 'log', '{}', 0)",
            (run_id,),
        )
        connection.commit()
        return int(cursor.lastrowid)
    finally:
        connection.close()


def delete_events(database: Path, run_id: str) -> None:
    connection = sqlite3.connect(database)
    try:
        connection.execute("DELETE FROM run_events WHERE run_id = ?", (run_id,))
        connection.commit()
    finally:
        connection.close()


def test_ids_keep_rising_after_the_newest_events_are_deleted(tmp_path: Path) -> None:
    database = tmp_path / "tunery.db"
    make_engine(database).dispose()
    ids = [add_event(database, "run_old") for _ in range(3)]
    delete_events(database, "run_old")
    assert add_event(database, "run_new") > max(ids)


def test_an_older_database_is_rebuilt_with_its_rows_and_ids(tmp_path: Path) -> None:
    database = tmp_path / "tunery.db"
    connection = sqlite3.connect(database)
    connection.execute(OLD_RUN_EVENTS)
    connection.executemany(
        "INSERT INTO run_events (id, run_id, kind, data, created_at) VALUES (?, ?, 'log', ?, 1)",
        [(1, "run_a", '{"message": "one"}'), (2, "run_b", '{"message": "two"}')],
    )
    connection.commit()
    connection.close()

    make_engine(database).dispose()
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute("SELECT id, run_id, data FROM run_events ORDER BY id").fetchall()
        created = connection.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'run_events'"
        ).fetchone()[0]
    finally:
        connection.close()
    assert rows == [(1, "run_a", '{"message": "one"}'), (2, "run_b", '{"message": "two"}')]
    assert "AUTOINCREMENT" in created
    delete_events(database, "run_b")
    assert add_event(database, "run_c") == 3
    make_engine(database).dispose()  # a second start leaves the rebuilt table alone
