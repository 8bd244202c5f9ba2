"""Attempt tokens stored hashed; attempts say why a cluster has not placed them yet.

``attempts.token`` held each worker's fencing token in plain text, so anyone who could read
the database could write as a worker. It becomes ``token_hash`` (the token's SHA-256 in
hex), computed here for existing rows so live workers keep working across the upgrade.
``waiting_reason`` is new and empty.
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("ALTER TABLE attempts RENAME COLUMN token TO token_hash")
    bind = op.get_bind()
    for attempt_id, token in bind.exec_driver_sql("SELECT id, token_hash FROM attempts").all():
        bind.exec_driver_sql(
            "UPDATE attempts SET token_hash = ? WHERE id = ?",
            (hashlib.sha256(token.encode()).hexdigest(), attempt_id),
        )
    op.add_column("attempts", sa.Column("waiting_reason", sa.String(), nullable=True))
