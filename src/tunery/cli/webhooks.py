"""``tunery webhooks``: the account's webhook endpoints and their delivery log."""

from __future__ import annotations

import click

from tunery.cli.remote import connected
from tunery.cli.render import format_time, print_table


@click.group("webhooks")
def webhooks_group() -> None:
    """Webhook endpoints for job events (uses TUNERY_URL, TUNERY_TOKEN)."""


@webhooks_group.command("add")
@click.argument("url")
@click.option("--secret", default=None, help="A whsec_… secret (default: a new one).")
def webhooks_add(url: str, secret: str | None) -> None:
    """Register URL for fine_tuning.job.* events; prints the signing secret once."""
    with connected() as client:
        endpoint = client.json("POST", "/api/v1/webhooks", json={"url": url, "secret": secret})
    click.echo(f"added {endpoint['id']} for {endpoint['url']}", err=True)
    click.echo("signing secret (shown once; verify deliveries with it):", err=True)
    click.echo(endpoint["secret"])


@webhooks_group.command("list")
def webhooks_list() -> None:
    """The registered endpoints."""
    with connected() as client:
        endpoints = client.json("GET", "/api/v1/webhooks", retry=True)
    if not endpoints:
        click.echo("no webhook endpoints: add one with `tunery webhooks add URL`", err=True)
        return
    rows = [
        [e["id"], e["url"], ", ".join(e["event_types"]), format_time(e["created_at"])]
        for e in endpoints
    ]
    print_table(["ID", "URL", "EVENTS", "ADDED"], rows)


@webhooks_group.command("delete")
@click.argument("endpoint_id", metavar="ID")
def webhooks_delete(endpoint_id: str) -> None:
    """Remove an endpoint and its delivery log."""
    with connected() as client:
        client.request("DELETE", f"/api/v1/webhooks/{endpoint_id}")
    click.echo(f"deleted {endpoint_id}", err=True)


@webhooks_group.command("test")
@click.argument("endpoint_id", metavar="ID")
def webhooks_test(endpoint_id: str) -> None:
    """Send the endpoint a signed test event; `tunery webhooks deliveries` shows its answer."""
    with connected() as client:
        delivery = client.json("POST", f"/api/v1/webhooks/{endpoint_id}/test")
    click.echo(f"queued test event {delivery['id']} for {endpoint_id}", err=True)
    click.echo(delivery["id"])


@webhooks_group.command("deliveries")
def webhooks_deliveries() -> None:
    """The newest deliveries: status, attempts and each endpoint's last answer."""
    with connected() as client:
        deliveries = client.json("GET", "/api/v1/webhooks/deliveries", retry=True)
    rows = [
        [
            d["id"],
            d["event_type"],
            d["job_id"] or "—",
            d["status"],
            str(d["attempts"]),
            d["last_error"] or str(d["last_status_code"] or ""),
            format_time(d["created_at"]),
        ]
        for d in deliveries
    ]
    print_table(["ID", "EVENT", "JOB", "STATUS", "TRIES", "LAST ANSWER", "CREATED"], rows)
