"""``python -m tunery.migrations "what changed"``: draft the next revision from the models.

The draft lands in ``versions/`` as ``NNNN_what_changed.py``. Autogenerate misses renames
and some type changes, so read the draft, and let ``tests/unit/test_migrations.py`` check it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from tunery.migrations import SCRIPTS, alembic_config, upgrade


@click.command()
@click.argument("message")
def draft(message: str) -> None:
    """Write the revision that takes the newest schema to the models in tunery.db."""
    head = ScriptDirectory(str(SCRIPTS)).get_current_head()
    if head is None:
        raise click.ClickException("no revision to build on: the baseline is missing")
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "head.db"
        upgrade(database)
        engine = create_engine(f"sqlite:///{database}")
        try:
            with engine.connect() as connection:
                command.revision(
                    alembic_config(connection),
                    message,
                    autogenerate=True,
                    rev_id=f"{int(head) + 1:04d}",
                )
        finally:
            engine.dispose()


if __name__ == "__main__":
    draft()
