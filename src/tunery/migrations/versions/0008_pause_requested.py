"""``runs.pause_requested``: the owner asked a training run to pause.

A flag beside ``finish_requested`` (false for existing runs); ``paused`` is a new status,
which needs no change to the ``status`` column (a string).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(
            sa.Column("pause_requested", sa.Boolean(), server_default="0", nullable=False)
        )
