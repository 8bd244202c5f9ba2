"""The schema of commit 5c9f119, the last release without migrations, as create_all made it.

Each statement creates only what is missing, so a database made by create_all before
migrations existed keeps its tables and rows and gains the ones it lacks (releases before
5c9f119 had no hub_entries or ledger). Its ``run_events`` may lack AUTOINCREMENT: see 0002.
"""

from alembic import op

revision = "0001"
down_revision = None

STATEMENTS = (
    """
    CREATE TABLE IF NOT EXISTS accounts (
        id VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        is_admin BOOLEAN NOT NULL,
        created_at FLOAT NOT NULL,
        PRIMARY KEY (id),
        UNIQUE (name)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS api_tokens (
        id VARCHAR NOT NULL,
        account_id VARCHAR NOT NULL,
        token_hash VARCHAR NOT NULL,
        created_at FLOAT NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(account_id) REFERENCES accounts (id),
        UNIQUE (token_hash)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS datasets (
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
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_datasets_account_id ON datasets (account_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS runs (
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
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_runs_account_id ON runs (account_id)
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_runs_status ON runs (status)
    """,
    """
    CREATE TABLE IF NOT EXISTS hub_entries (
        id VARCHAR NOT NULL,
        account_id VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        base_model VARCHAR NOT NULL,
        artifacts JSON NOT NULL,
        created_at FLOAT NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(account_id) REFERENCES accounts (id)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_hub_entries_account_id ON hub_entries (account_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS ledger (
        id INTEGER NOT NULL,
        account_id VARCHAR NOT NULL,
        run_id VARCHAR,
        kind VARCHAR NOT NULL,
        amount FLOAT NOT NULL,
        note VARCHAR NOT NULL,
        created_at FLOAT NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(account_id) REFERENCES accounts (id)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_ledger_account_id ON ledger (account_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS attempts (
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
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_attempts_active ON attempts (active)
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_attempts_run_id ON attempts (run_id)
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_attempts_node ON attempts (node)
    """,
    """
    CREATE TABLE IF NOT EXISTS run_events (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        run_id VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        data JSON NOT NULL,
        created_at FLOAT NOT NULL,
        FOREIGN KEY(run_id) REFERENCES runs (id)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_run_events_run_id ON run_events (run_id)
    """,
    """
    CREATE INDEX IF NOT EXISTS ix_run_events_run_id_id ON run_events (run_id, id)
    """,
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
