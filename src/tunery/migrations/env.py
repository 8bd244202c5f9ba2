"""Alembic's entry point: migrates the connection that ``tunery.migrations`` hands it."""

from alembic import context

from tunery.db import Base

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=Base.metadata,
    # SQLite changes most column definitions only by rebuilding the table; batch mode does.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
