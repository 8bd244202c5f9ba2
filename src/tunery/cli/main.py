"""The ``tunery`` command line: the group and where each command lives.

- ``cli/local.py``: work on this machine (train, export, demo-model, gguf-toolchain, serve);
- ``cli/remote.py``: datasets and the Hub on a server; ``cli/runs.py``: runs on a server;
- ``cli/admin.py``: accounts, on the server's data directory;
- ``cli/render.py``: what the terminal shows, and the exit codes.

Importing this module does not import torch (a test checks it): commands import the
pipeline when they run, so ``tunery --help`` and the server-client commands start fast.
"""

from __future__ import annotations

import click

from tunery import __version__
from tunery.cli.admin import accounts
from tunery.cli.chat import chat
from tunery.cli.local import LOCAL_COMMANDS
from tunery.cli.remote import datasets_group, hub_group
from tunery.cli.runs import runs_group
from tunery.cli.webhooks import webhooks_group


@click.group()
@click.version_option(__version__, prog_name="tunery")
def cli() -> None:
    """tunery: LoRA fine-tuning with a queue, a live Run panel, and Ollama-ready exports."""


for command in (
    *LOCAL_COMMANDS,
    datasets_group,
    runs_group,
    hub_group,
    accounts,
    chat,
    webhooks_group,
):
    cli.add_command(command)
