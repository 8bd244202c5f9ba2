"""The Hub with ``storage: kind: s3`` through a real server and a real S3-compatible store.

The store is SeaweedFS on loopback (``tests/s3_store.py``); it checks the presigned URLs'
signatures itself. The server finds its credentials the way boto3 always does, in the
environment, since tunery.yaml names none.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from control_harness import add_account, payload

from tunery.hub import signing
from tunery.pipeline.save import LORA_BUNDLE_FILES


def mint(client, entry_id: str, artifact: str = "lora") -> httpx.Response:
    return client.http.post(f"/hub/{entry_id}/artifacts/{artifact}/url")


@pytest.mark.slow
def test_s3_hub_entries_download_from_the_store_and_delete_there(
    start_server, client_for, demo_dataset, s3_store, monkeypatch
):
    for name, value in s3_store.environment().items():
        monkeypatch.setenv(name, value)  # the server's environment is copied from ours
    prefix = f"e2e-{secrets.token_hex(4)}/"
    server = start_server(
        storage={
            "kind": "s3",
            "bucket": s3_store.bucket,
            "prefix": prefix,
            "endpoint_url": s3_store.endpoint_url,
            "region": s3_store.region,
        }
    )
    client = client_for(server)
    run = client.submit_ok(payload(client.dataset(demo_dataset)))
    done = client.wait_terminal(run["id"])
    assert done["status"] == "completed", done["error"]
    entry_id = done["hub_entry_id"]
    entry = client.http.get(f"/hub/{entry_id}").json()
    info = entry["artifacts"]["lora"]
    assert set(entry["artifacts"]) == {"lora"}
    assert s3_store.keys(prefix) == [f"{prefix}{entry_id}/lora.zip"]
    assert not (server.root / "hub").exists()  # nothing kept on the server's disk

    minted = mint(client, entry_id)
    assert minted.status_code == 200, minted.text
    url, expires_at = minted.json()["url"], minted.json()["expires_at"]
    assert url.startswith(f"{s3_store.endpoint_url}/") and "X-Amz-Signature=" in url
    assert expires_at <= time.time() + signing.DEFAULT_LIFETIME
    download = httpx.get(url)  # straight from the store, no bearer token
    assert download.status_code == 200, download.text
    assert hashlib.sha256(download.content).hexdigest() == info["sha256"]
    assert download.headers["content-disposition"] == f'attachment; filename="{info["filename"]}"'
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert sorted(archive.namelist()) == sorted(LORA_BUNDLE_FILES)

    outsider = client_for(server, add_account(server, "outsider-s3"))
    assert mint(outsider, entry_id).status_code == 404
    assert outsider.http.delete(f"/hub/{entry_id}").status_code == 404

    # A valid link of the server's own download route is sent on to the store.
    owner = server.query("SELECT account_id FROM hub_entries WHERE id = ?", entry_id)[0][
        "account_id"
    ]
    query, _ = signing.sign(
        signing.load_secret(server.root), account_id=owner, entry_id=entry_id, artifact="lora"
    )
    redirected = httpx.get(f"{server.url}/hub/download/{entry_id}/lora?{query}")
    assert redirected.status_code == 307
    assert redirected.headers["location"].startswith(f"{s3_store.endpoint_url}/")
    assert httpx.get(redirected.headers["location"]).content == download.content

    fetched = subprocess.run(
        [sys.executable, "-m", "tunery.cli", "hub", "download", entry_id, "--artifact", "lora"],
        capture_output=True,
        text=True,
        env={**os.environ, "TUNERY_URL": server.url, "TUNERY_TOKEN": server.token},
        cwd=server.root,
        timeout=60,
    )
    assert fetched.returncode == 0, fetched.stderr  # the CLI checks size and SHA-256
    assert Path(server.root, fetched.stdout.strip()).read_bytes() == download.content

    assert client.http.delete(f"/hub/{entry_id}").status_code == 204
    assert s3_store.keys(prefix) == []
    assert httpx.get(url).status_code == 404


@pytest.mark.slow
def test_a_store_that_refuses_the_bundles_fails_the_run_with_the_reason(
    start_server, client_for, demo_dataset, s3_store, monkeypatch
):
    for name, value in s3_store.environment().items():
        monkeypatch.setenv(name, value)
    server = start_server(
        storage={
            "kind": "s3",
            "bucket": "no-such-bucket",
            "endpoint_url": s3_store.endpoint_url,
            "region": s3_store.region,
        }
    )
    client = client_for(server)
    run = client.submit_ok(payload(client.dataset(demo_dataset)))
    done = client.wait_terminal(run["id"], timeout=120)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "hub_storage_failed"
    assert "no-such-bucket" in done["error"]["message"]
    assert done["hub_entry_id"] is None
    assert client.http.get("/hub").json() == []
    assert done["attempt"] == 1  # not retried: a missing bucket does not heal by itself
    assert (server.root / "runs" / run["id"] / "ctl-run-lora.zip").is_file()
