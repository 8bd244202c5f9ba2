"""``runs.tags``, ``runs.note``; ``webhook_deliveries.source_event_id`` nullable.

Tags and a note are the owner's annotations of a run (empty for existing runs). A test
event sent to a webhook endpoint on request announces no run event, so its delivery has no
source event.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("tags", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("note", sa.String(), server_default="", nullable=False))
    with op.batch_alter_table("webhook_deliveries") as batch_op:
        batch_op.alter_column("source_event_id", existing_type=sa.Integer(), nullable=True)
