"""Commands that talk to a tunery server: the connection they share, datasets, and the Hub.

They find the server through ``TUNERY_URL`` and ``TUNERY_TOKEN`` (see ``cli/client.py``).
The runs commands are in ``cli/runs.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tunery.cli.render import (
    fail,
    fail_with,
    format_size,
    format_time,
    kind_label,
    print_table,
)

if TYPE_CHECKING:
    from tunery.cli.client import Client


@contextmanager
def connected() -> Iterator[Client]:
    """A client of the server the environment names, closed on the way out.

    A ``ClientError`` raised inside, by the client or by the command, is printed as what
    went wrong and how to fix it, and the command exits 1: never a traceback.
    """
    from tunery.cli.client import Client, ClientError

    try:
        with Client.from_env() as client:
            yield client
    except ClientError as error:
        fail_with(error)


# Datasets ------------------------------------------------------------------------------


@click.group("datasets")
def datasets_group() -> None:
    """Datasets on the server: upload, list (uses TUNERY_URL, TUNERY_TOKEN)."""


@datasets_group.command("upload")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Display name (default: the file name).")
def datasets_upload(file: Path, name: str | None) -> None:
    """Upload and validate a dataset (.jsonl, .csv, .parquet); prints its id."""
    with connected() as client:
        dataset = client.upload_dataset(file, name=name)
    click.echo(
        f"uploaded {dataset['name']}: {dataset['rows']} rows, {dataset['format']} format "
        f"({kind_label(dataset)})",
        err=True,
    )
    click.echo(dataset["id"])


@datasets_group.command("list")
def datasets_list() -> None:
    """The datasets uploaded by this account, newest first."""
    with connected() as client:
        datasets = client.list_datasets()
    if not datasets:
        click.echo("no datasets yet: upload one with `tunery datasets upload FILE`", err=True)
        return
    rows = [
        [
            dataset["id"],
            dataset["name"],
            dataset["format"],
            kind_label(dataset),
            str(dataset["rows"]),
            format_size(dataset.get("bytes")),
            format_time(dataset.get("created_at")),
        ]
        for dataset in datasets
    ]
    print_table(["ID", "NAME", "FORMAT", "KIND", "ROWS", "SIZE", "CREATED"], rows)


# The Hub -------------------------------------------------------------------------------


@click.group("hub")
def hub_group() -> None:
    """Hub entries: the artifacts of finished runs (uses TUNERY_URL, TUNERY_TOKEN)."""


@hub_group.command("list")
def hub_list() -> None:
    """Hub entries with their artifacts and sizes, newest first."""
    with connected() as client:
        entries = client.json("GET", "/api/v1/hub", retry=True)
    if not entries:
        click.echo("the Hub is empty: artifacts appear when a run saves its adapter", err=True)
        return
    for entry in entries:
        artifacts = ", ".join(
            f"{kind} {info['size'] / 2**20:.1f} MiB" for kind, info in entry["artifacts"].items()
        )
        click.echo(f"{entry['id']}  {entry['name']:<24} {entry['base_model']:<32} {artifacts}")


@hub_group.command("download")
@click.argument("entry_id", metavar="ENTRY")
@click.option("--artifact", type=click.Choice(["lora", "gguf"]), required=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Folder to save the ZIP in (default: here).",
)
def hub_download(entry_id: str, artifact: str, out_dir: Path) -> None:
    """Download an artifact through a fresh signed URL; checks its size and SHA-256."""
    with connected() as client:
        entry = client.json("GET", f"/api/v1/hub/{entry_id}", retry=True)
        signed = client.json("POST", f"/api/v1/hub/{entry_id}/artifacts/{artifact}/url", retry=True)
    info = entry["artifacts"][artifact]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(info["filename"]).name
    download_verified(signed["url"], target, size=info["size"], sha256=info["sha256"])
    click.echo(str(target))


def download_verified(url: str, target: Path, *, size: int, sha256: str) -> None:
    """Stream ``url`` into ``target``, which appears only once size and digest match.

    The bytes land in a hidden ``.partial`` file next to it first, removed on any failure,
    so an interrupted download never looks like a finished one.
    """
    import httpx

    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=60) as response:
            if response.status_code != 200:
                fail(f"download failed with HTTP {response.status_code}")
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    file.write(chunk)
        if digest.hexdigest() != sha256 or partial.stat().st_size != size:
            fail("the downloaded file does not match its checksum; try again")
        partial.replace(target)
    except httpx.HTTPError as error:
        fail(f"download interrupted: {error}")
    finally:
        partial.unlink(missing_ok=True)
