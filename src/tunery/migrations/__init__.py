"""Schema migrations (Alembic on SQLite): a database is brought to the newest schema on open.

``upgrade(path)`` runs whenever the control plane opens its database (``tunery.db.make_engine``),
so ``tunery serve`` upgrades an older data dir in place. Revisions live in ``versions/``, one
file each, ``NNNN_what.py`` with revision id ``NNNN``, and only go forward: to go back,
restore a copy of the data dir. A change to a model in ``tunery.db`` needs a revision;
``python -m tunery.migrations "what changed"`` drafts one from the difference between the
models and the newest schema, and ``tests/unit/test_migrations.py`` fails until they agree.

Revision 0001 is the schema of the last release without migrations (commit 5c9f119). It
creates only what is missing, so a database made before then by ``create_all`` is adopted
with its rows.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.pool import NullPool

SCRIPTS = Path(__file__).parent
# Alembic's ``context`` and ``op`` are module globals: one migration at a time per process.
_ONE_AT_A_TIME = threading.Lock()


def upgrade(path: Path) -> None:
    """Bring the SQLite database at ``path`` to the newest schema, creating it if missing.

    Safe at every start, also from processes starting together: it is one transaction under
    SQLite's write lock (BEGIN IMMEDIATE), so a second process waits, then finds the schema
    current and changes nothing, and a step that fails leaves the database as it was.
    """
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool, connect_args={"timeout": 30})
    event.listen(engine, "connect", _own_transactions)
    event.listen(engine, "begin", _write_lock)
    try:
        with _ONE_AT_A_TIME, engine.connect() as connection, connection.begin():
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for ``connection``, without an alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def _own_transactions(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite opens transactions only before INSERT/UPDATE/DELETE, so DDL would commit
    # statement by statement; with its handling off, _write_lock's BEGIN covers everything.
    dbapi_connection.isolation_level = None
    # Off, as SQLite's default: rebuilding a table copies every row as it is.
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


def _write_lock(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
