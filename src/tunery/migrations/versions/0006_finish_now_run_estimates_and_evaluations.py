"""``runs.finish_requested``, ``runs.estimate``, ``runs.evaluation``.

"Finish now" is a flag beside ``cancel_requested`` (false for existing runs); the estimate a
run was submitted with, and its latest and best evaluation, are JSON that older runs lack.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(
            sa.Column("finish_requested", sa.Boolean(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("estimate", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
