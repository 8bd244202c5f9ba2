"""``runs.idempotency_payload_hash``: the digest of the payload an Idempotency-Key was used with.

A retried submission with the same key and payload returns the first run; the same key with a
different payload is refused (422). Runs made before this revision have no digest and keep
answering as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("idempotency_payload_hash", sa.String(), nullable=True))
