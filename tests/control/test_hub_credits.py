"""Hub entries, signed downloads, credits and accounts through a real server."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from control_harness import payload, prepare_root, running_server, server_env

from tunery.gguf.export import GGUF_BUNDLE_FILES
from tunery.gguf.toolchain import converter_dir
from tunery.pipeline.save import LORA_BUNDLE_FILES


def admin(server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunery.cli", "accounts", *args, "--data-dir", str(server.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def new_account(server, name: str, grant: float = 0) -> str:
    result = admin(server, "create", name, "--grant", str(grant))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def mint(client, entry_id: str, artifact: str, **params) -> httpx.Response:
    return client.http.post(f"/hub/{entry_id}/artifacts/{artifact}/url", params=params)


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode({**query, **changes})}"


def credits(client) -> dict:
    response = client.http.get("/credits")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_completed_run_gets_a_hub_entry_with_signed_downloads(server, client_for, demo_dataset):
    client = client_for(server)
    run = client.submit_ok(payload(client.dataset(demo_dataset), export={"gguf": True}))
    done = client.wait_terminal(run["id"])
    assert done["status"] == "completed", done["error"]
    entry_id = done["hub_entry_id"]
    entry = client.http.get(f"/hub/{entry_id}").json()
    assert set(entry["artifacts"]) == {"lora", "gguf"}

    for artifact, files in (("lora", LORA_BUNDLE_FILES), ("gguf", GGUF_BUNDLE_FILES)):
        first, second = mint(client, entry_id, artifact), mint(client, entry_id, artifact)
        assert first.status_code == 200 and first.json()["url"] != second.json()["url"]
        download = httpx.get(first.json()["url"])  # no bearer token needed
        assert download.status_code == 200
        body = download.content
        assert int(download.headers["content-length"]) == len(body)
        assert download.headers["x-checksum-sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["artifacts"][artifact]["sha256"] == hashlib.sha256(body).hexdigest()
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert sorted(archive.namelist()) == sorted(files)

    url = mint(client, entry_id, "lora").json()["url"]
    query = parse_qs(urlsplit(url).query)
    tampered = [
        with_query(url, account="acc_0000000000000000"),
        with_query(url, expires=str(int(query["expires"][0]) + 60)),
        with_query(url, nonce="0" * 16),
        with_query(url, signature="0" * 64),
        url.replace("/lora?", "/gguf?"),
        url.replace(entry_id, "hub_0000000000000000"),
    ]
    for bad in tampered:
        assert httpx.get(bad).status_code == 403, bad

    short = mint(client, entry_id, "lora", lifetime=1).json()["url"]
    time.sleep(2.1)
    assert httpx.get(short).status_code == 403

    ledger = credits(client)
    kinds = [row["kind"] for row in ledger["ledger"]]
    assert kinds == ["grant", "charge"]
    assert ledger["balance"] == pytest.approx(sum(row["amount"] for row in ledger["ledger"]))
    assert -ledger["ledger"][1]["amount"] == pytest.approx(done["metrics"]["credits"], abs=1e-3)

    env = {**os.environ, "TUNERY_URL": server.url, "TUNERY_TOKEN": server.token}
    cli = [sys.executable, "-m", "tunery.cli", "hub"]
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, env=env, timeout=60)
    assert entry_id in listed.stdout and "gguf" in listed.stdout
    fetched = subprocess.run(
        [*cli, "download", entry_id, "--artifact", "lora", "--out", str(server.root / "downloads")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert fetched.returncode == 0, fetched.stderr
    saved = Path(fetched.stdout.strip())
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == entry["artifacts"]["lora"]["sha256"]
    missing = subprocess.run(
        [*cli, "download", "hub_0000000000000000", "--artifact", "lora"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 1 and "no Hub entry" in missing.stderr

    # Deleting the run record keeps the Hub entry; deleting the entry removes its files.
    assert client.http.delete(f"/runs/{run['id']}").status_code == 204
    assert client.http.get(f"/hub/{entry_id}").status_code == 200
    assert (server.root / "hub" / entry_id).is_dir()
    assert client.http.delete(f"/hub/{entry_id}").status_code == 204
    assert client.http.get(f"/hub/{entry_id}").status_code == 404
    assert not (server.root / "hub" / entry_id).exists()
    assert httpx.get(url).status_code == 404


def test_traversal_in_file_routes_is_refused(shared_server, client_for):
    client = client_for(shared_server)
    base = shared_server.url
    attempts = [
        f"{base}/hub/download/..%2F..%2Ftunery.db/lora",
        f"{base}/hub/download/hub_1/..%2F..%2F..%2Fadmin-token",
        f"{base}/hub/download/%2e%2e/%2e%2e",
        f"{base}/hub/download/hub_1/lora?account=x&expires=9999999999&signature=a",
    ]
    for url in attempts:
        response = httpx.get(url)
        assert response.status_code in (403, 404), url
        assert "tny_" not in response.text and "SQLite" not in response.text
    for path in ("/hub/..%2Fadmin-token", "/hub/x/artifacts/..%2F..%2Fx/url"):
        assert client.http.request("GET" if "url" not in path else "POST", path).status_code in (
            404,
            405,
            422,
        )


def test_another_accounts_hub_entries_are_404(shared_server, client_for, demo_dataset):
    token = new_account(shared_server, "outsider-hub", grant=10)
    outsider = client_for(shared_server, token)
    owner = client_for(shared_server)
    rows = shared_server.query("SELECT id FROM hub_entries LIMIT 1")
    entry_id = rows[0]["id"] if rows else "hub_0123456789abcdef"
    for response in (
        outsider.http.get(f"/hub/{entry_id}"),
        outsider.http.delete(f"/hub/{entry_id}"),
        mint(outsider, entry_id, "lora"),
    ):
        assert response.status_code == 404
    assert outsider.http.get("/hub").json() == []
    assert owner.http.get("/credits").status_code == 200
    assert outsider.http.get("/credits").json()["balance"] == 10


def test_insufficient_credits_block_the_submission_until_granted(
    shared_server, client_for, demo_dataset
):
    token = new_account(shared_server, "broke")
    client = client_for(shared_server, token)
    dataset = client.dataset(demo_dataset)
    blocked = client.submit(payload(dataset))
    assert blocked.status_code == 422
    problems = blocked.json()["detail"]["problems"]
    assert [p["field"] for p in problems] == ["credits"]
    assert "0.00 credits" in problems[0]["message"]
    assert client.runs() == []
    assert credits(client)["ledger"] == []

    granted = admin(shared_server, "grant", "broke", "5")
    assert granted.returncode == 0 and "balance 5.00" in granted.stdout
    run = client.submit_ok(payload(dataset))
    response = client.cancel(run["id"])
    assert response.status_code == 200, (response.text, client.run(run["id"]))


def test_admin_issues_more_tokens_that_work(shared_server, client_for):
    new_account(shared_server, "two-tokens", grant=1)
    issued = admin(shared_server, "token", "two-tokens")
    assert issued.returncode == 0
    second = client_for(shared_server, issued.stdout.strip().splitlines()[-1])
    assert second.http.get("/credits").json()["balance"] == 1


def test_admin_cli_rejects_bad_input(shared_server):
    assert "no account named" in admin(shared_server, "grant", "nobody", "5").stderr
    assert admin(shared_server, "grant", "admin", "-5").returncode != 0
    assert "already exists" in admin(shared_server, "create", "admin").stderr
    listed = admin(shared_server, "list")
    assert listed.returncode == 0 and "admin" in listed.stdout


@pytest.mark.slow
def test_cancelled_run_has_no_hub_entry_and_pays_whole_minutes(server, client_for, demo_dataset):
    client = client_for(server)
    run = client.submit_ok(payload(client.dataset(demo_dataset), training={"max_steps": 5000}))
    client.wait_step(run["id"], 3)
    cancelled = client.cancel(run["id"]).json()
    assert cancelled["status"] == "cancelled" and cancelled["hub_entry_id"] is None
    assert cancelled["metrics"]["credits"] == 0  # under a minute: nothing billed
    assert [row["kind"] for row in credits(client)["ledger"]] == ["grant"]
    assert server.query("SELECT count(*) AS n FROM hub_entries")[0]["n"] == 0


@pytest.mark.slow
def test_lora_only_entry_when_the_gguf_step_fails_and_the_delivered_lora_is_billed(
    demo_model_dir, client_for, demo_dataset, tmp_path
):
    """A converter that crashes on the full conversion (the pre-flight passes)."""
    real = converter_dir()
    broken = tmp_path / "broken-llama.cpp"
    broken.mkdir()
    for name in ("conversion", "gguf-py"):
        (broken / name).symlink_to(real / name, target_is_directory=True)
    shutil.copyfile(real / "convert_hf_to_gguf.py", broken / "real_convert.py")
    (broken / "convert_hf_to_gguf.py").write_text(
        "import importlib.util, sys\n"
        "from pathlib import Path\n"
        "spec = importlib.util.spec_from_file_location('real_convert', "
        "Path(__file__).with_name('real_convert.py'))\n"
        "real = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(real)\n"
        "def main():\n"
        "    if '--vocab-only' not in sys.argv:\n"
        "        raise SystemExit('converter crashed')\n"
        "    real.main()\n"
    )
    root = prepare_root(tmp_path / "data", demo_model_dir)
    env = {**server_env(root), "TUNERY_LLAMA_CPP_DIR": str(broken)}
    with running_server(root, env) as server:
        check_lora_only_entry(client_for(server), demo_dataset)


def check_lora_only_entry(client, demo_dataset) -> None:
    run = client.submit_ok(
        payload(client.dataset(demo_dataset), export={"gguf": True}, training={"max_steps": 40})
    )
    done = client.wait_terminal(run["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "gguf_export_failed"
    entry = client.http.get(f"/hub/{done['hub_entry_id']}").json()
    assert set(entry["artifacts"]) == {"lora"}
    # The adapter reached the Hub, so the training that made it is billed although the run
    # is a verified model's failure (billing.REFUND_RULES).
    assert done["refunded"] is False
    assert "LoRA was delivered" in done["refund_note"]
    ledger = credits(client)["ledger"]
    assert [row["kind"] for row in ledger] in (["grant", "charge"], ["grant"])
    charged = sum(-row["amount"] for row in ledger if row["kind"] == "charge")
    assert credits(client)["balance"] == pytest.approx(100 - charged)
