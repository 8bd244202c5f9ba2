"""``tunery accounts``: admin commands that work on the server's data directory directly."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from sqlalchemy import select

from tunery.db import Account, make_engine, make_sessions
from tunery.errors import TuneryError
from tunery.runs import billing
from tunery.runs.accounts import create_account, issue_token
from tunery.runs.plane import ControlPlane
from tunery.runs.store import EventNotifier
from tunery.server import data_dir_from, keep_files_private
from tunery.settings import Settings

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The server's state directory (default: TUNERY_DATA_DIR or ~/.tunery).",
)


def _plane(data_dir: Path | None) -> ControlPlane:
    keep_files_private()
    settings = Settings.load(data_dir_from(data_dir))
    engine = make_engine(settings.database_path)
    return ControlPlane(
        settings=settings, sessions=make_sessions(engine), backend=None, notifier=EventNotifier()
    )


def _account(plane: ControlPlane, name: str) -> Account:
    with plane.sessions() as session:
        account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        click.echo(f"error: no account named {name!r}", err=True)
        sys.exit(1)
    return account


@click.group("accounts")
def accounts() -> None:
    """Accounts, API tokens and credits (admin)."""


@accounts.command("create")
@click.argument("name")
@click.option("--grant", type=float, default=0.0, help="Credits to start with.")
@data_dir_option
def create(name: str, grant: float, data_dir: Path | None) -> None:
    """Create an account; prints its API token once."""
    if grant < 0:
        click.echo("error: --grant must not be negative", err=True)
        sys.exit(1)
    plane = _plane(data_dir)
    try:
        account_id, token = create_account(plane, name=name)
    except TuneryError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(1)
    if grant:
        with plane.sessions.begin() as session:
            billing.record(
                session,
                account_id=account_id,
                kind="grant",
                amount=grant,
                note="granted at creation",
            )
    click.echo(f"created account {name} ({account_id}); its API token (shown once):", err=True)
    click.echo(token)


@accounts.command("grant")
@click.argument("name")
@click.argument("amount", type=float)
@click.option("--note", default="admin grant")
@data_dir_option
def grant(name: str, amount: float, note: str, data_dir: Path | None) -> None:
    """Add credits to an account's balance."""
    if amount <= 0:
        click.echo("error: AMOUNT must be positive", err=True)
        sys.exit(1)
    plane = _plane(data_dir)
    account = _account(plane, name)
    with plane.sessions.begin() as session:
        billing.record(session, account_id=account.id, kind="grant", amount=amount, note=note)
        balance = billing.balance(session, account.id)
    click.echo(f"{name}: balance {balance:.2f} credits")


@accounts.command("token")
@click.argument("name")
@data_dir_option
def token(name: str, data_dir: Path | None) -> None:
    """Issue another API token for an account; prints it once."""
    plane = _plane(data_dir)
    account = _account(plane, name)
    value = issue_token(plane, account_id=account.id)
    click.echo(f"new API token for {name} (shown once):", err=True)
    click.echo(value)


@accounts.command("list")
@data_dir_option
def list_accounts(data_dir: Path | None) -> None:
    """Accounts and their balances."""
    plane = _plane(data_dir)
    with plane.sessions() as session:
        for account in session.scalars(select(Account).order_by(Account.created_at)):
            role = "admin" if account.is_admin else "user"
            click.echo(
                f"{account.name:<24} {account.id}  {role:<5}  "
                f"{billing.balance(session, account.id):>10.2f} credits"
            )
