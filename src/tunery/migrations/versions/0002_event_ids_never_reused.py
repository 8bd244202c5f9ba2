"""``run_events`` with AUTOINCREMENT, for databases made before it had it.

Without it SQLite reuses the ids of the newest events once they are deleted with their run,
and a stream's Last-Event-ID cursor would skip the events that reuse them. The table is
rebuilt with the same rows and ids; where it already has AUTOINCREMENT nothing changes.
"""

from alembic import op

revision = "0002"
down_revision = "0001"

RUN_EVENTS = """
CREATE TABLE run_events (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    data JSON NOT NULL,
    created_at FLOAT NOT NULL,
    FOREIGN KEY(run_id) REFERENCES runs (id)
)
"""
INDEXES = {
    "ix_run_events_run_id": "run_events (run_id)",
    "ix_run_events_run_id_id": "run_events (run_id, id)",
}


def upgrade() -> None:
    created = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'run_events'"
        )
        .scalar_one()
    )
    if "AUTOINCREMENT" in created.upper():
        return
    op.execute("ALTER TABLE run_events RENAME TO run_events_old")
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute(RUN_EVENTS)
    op.execute(
        "INSERT INTO run_events (id, run_id, kind, data, created_at) "
        "SELECT id, run_id, kind, data, created_at FROM run_events_old"
    )
    op.execute("DROP TABLE run_events_old")
    for name, target in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON {target}")
