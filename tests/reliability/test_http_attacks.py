"""Attacks on a real ``tunery serve``: another account and no account on every route,
tampered and traversed signed URLs, odd headers, retried and racing submissions.

One server for the module. Account A (the admin) owns a dataset, a cancelled run and a Hub
entry, all named ``SECRET_NAME``; account B goes after each on every route the app has.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from control_harness import (
    Client,
    Server,
    add_account,
    payload,
    prepare_root,
    running_server,
    server_env,
)
from server_kit import SECRET_NAME, Victim, add_hub_entry, every_route

# Routes that answer without an account token by design, and what they answer then.
PUBLIC = {"/healthz", "/api/v1/meta", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
PUBLIC_PREFIXES = ("/redoc", "/static")
REFUSALS = {400, 401, 403, 404, 405, 409, 422}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Server]:
    root = prepare_root(
        tmp_path_factory.mktemp("attacks") / "data", demo_model_dir, max_queued_runs_per_account=30
    )
    with running_server(root, server_env(root)) as server:
        yield server


@pytest.fixture(scope="module")
def victim(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Victim:
    owner = Client(server)
    try:
        dataset = owner.upload_bytes(
            f"{SECRET_NAME}.jsonl", Path("examples/demo-dataset.jsonl").read_bytes()
        )
        assert dataset.status_code == 201, dataset.text
        dataset_id = dataset.json()["id"]
        run = owner.submit_ok(payload(dataset_id, name=SECRET_NAME))
        owner.cancel_ok(run["id"])
        account_id = server.query("SELECT account_id FROM runs WHERE id = ?", run["id"])[0][0]
        entry_id, content = add_hub_entry(
            server, account_id, run["id"], tmp_path_factory.mktemp("bundle")
        )
    finally:
        owner.close()
    return Victim(dataset_id, run["id"], entry_id, content)


@pytest.fixture(scope="module")
def intruder(server: Server) -> Iterator[httpx.Client]:
    token = add_account(server, "intruder", credits=100)
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


def attempt(client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response | None:
    """The answer, or None when the connection dropped (a crash, as a client sees it).

    An event stream is read up to its first chunk (it may never end).
    """
    try:
        with client.stream(method, path, **kwargs) as response:
            if "text/event-stream" in response.headers.get("content-type", ""):
                response._content = next(response.iter_bytes(), b"")
            else:
                response.read()
            return response
    except httpx.TransportError:
        return None


def test_another_account_gets_nothing_of_anyone_else_on_any_route(
    server: Server, victim: Victim, intruder: httpx.Client, figures
) -> None:
    leaks = []
    for method, template in every_route():
        if template in PUBLIC or template.startswith(PUBLIC_PREFIXES):
            continue
        path = victim.fill(template)
        body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        headers = {"X-Attempt-Token": "stolen", "Last-Event-ID": "0"}
        with_ids = "{" in template
        response = attempt(intruder, method, path, headers=headers, timeout=5, **body)
        streamed = response is not None and "event-stream" in response.headers["content-type"]
        if with_ids and streamed:
            pytest.fail(f"{method} {path} opened another account's event stream")
        leaked = response is not None and SECRET_NAME in response.text
        expected = REFUSALS if with_ids else {200, 201, 400, 404, 405, 409, 422}
        figures.answer("another account", response, expected)
        if leaked or response is None or response.status_code >= 500:
            leaks.append((method, path, response and response.status_code))
        elif with_ids:
            assert response.status_code in REFUSALS, (method, path, response.text)
    assert leaks == []


def test_no_token_is_refused_on_every_route(server: Server, victim: Victim, figures) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        for method, template in every_route():
            if template in PUBLIC or template.startswith(PUBLIC_PREFIXES):
                continue
            body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
            response = attempt(anonymous, method, victim.fill(template), **body)
            figures.answer("no token", response, {401, 403, 404, 405, 422})
            assert response is not None and response.status_code in {401, 403, 404, 405, 422}, (
                method,
                template,
                response and response.text,
            )
            assert SECRET_NAME not in response.text


def signed_url(server: Server, victim: Victim) -> str:
    owner = Client(server)
    try:
        minted = owner.http.post(f"/hub/{victim.entry_id}/artifacts/lora/url")
    finally:
        owner.close()
    assert minted.status_code == 200, minted.text
    return minted.json()["url"]


def tampered(url: str) -> list[str]:
    """Every way of changing a signed URL that must not serve a byte."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    base = f"{parts.scheme}://{parts.netloc}"

    def with_query(**changes: str) -> str:
        return f"{base}{parts.path}?{urlencode({**query, **changes})}"

    flipped = query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")
    variants = [
        with_query(signature=flipped),
        with_query(signature=query["signature"].upper()),
        with_query(signature=query["signature"] + "é"),
        with_query(expires=str(int(query["expires"]) + 1)),
        with_query(expires="9" * 5000),
        with_query(expires="٣" * 10),
        with_query(expires=str(2**64)),
        with_query(nonce=query["nonce"] + "0"),
        with_query(account="acc_someone_else"),
        f"{base}{parts.path.replace('/lora', '/gguf')}?{parts.query}",
        f"{base}{parts.path.replace('/lora', '/..%2F..%2Ftunery.db')}?{parts.query}",
        f"{base}/hub/download/..%2F..%2F..%2Fetc/lora?{parts.query}",
        f"{base}{parts.path}",
    ]
    return variants


def test_tampered_and_traversed_download_urls_serve_nothing(
    server: Server, victim: Victim, figures
) -> None:
    url = signed_url(server, victim)
    assert httpx.get(url, timeout=10).content == victim.artifact_bytes
    for variant in tampered(url):
        response = attempt(httpx.Client(timeout=10), "GET", variant)
        figures.answer("signed URLs", response, {403, 404})
        assert response is not None and response.status_code in {403, 404}, (variant, response)
        assert response.content != victim.artifact_bytes


@pytest.mark.parametrize(
    "cursor", ["²", "٣٤٥", "9" * 5000, str(2**63), str(2**64), "-1", "1e3", "0x1f"]
)
def test_odd_last_event_ids_never_crash_a_stream(
    server: Server, victim: Victim, cursor: str, figures
) -> None:
    headers = {"Authorization": f"Bearer {server.token}", "Last-Event-ID": cursor.encode()}
    for path in (f"/api/v1/runs/{victim.run_id}/events", "/api/v1/events"):
        try:
            with httpx.stream("GET", server.url + path, headers=headers, timeout=10) as response:
                status = response.status_code
        except httpx.TransportError:
            status = None
        figures.attack("event cursors", refused=status == 200, crashed=status in (None, 500))
        assert status == 200, (path, cursor)


def test_retried_keys_racing_make_one_run_each_and_no_5xx(
    server: Server, victim: Victim, figures
) -> None:
    owner = Client(server)
    keys = [f"race-{n}" for n in range(12)]
    jobs = [key for key in keys for _ in range(5)]
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(
                    lambda key: attempt(
                        owner.http,
                        "POST",
                        "/runs",
                        json=payload(victim.dataset_id, name=key),
                        headers={"Idempotency-Key": key},
                    ),
                    jobs,
                )
            )
        by_key: dict[str, set[str]] = {}
        for key, answer in zip(jobs, answers, strict=True):
            figures.answer("retried submissions", answer, {201})
            assert answer is not None and answer.status_code == 201, answer and answer.text
            by_key.setdefault(key, set()).add(answer.json()["id"])
        assert all(len(ids) == 1 for ids in by_key.values()), by_key  # none duplicated
        stored = server.query(
            "SELECT idempotency_key FROM runs WHERE idempotency_key LIKE 'race-%'"
        )
        assert sorted(row[0] for row in stored) == sorted(keys)  # none lost, none twice
        changed = owner.submit(payload(victim.dataset_id, name="other"), key=keys[0])
        figures.answer("idempotency", changed, {422})
        assert changed.status_code == 422 and "Idempotency-Key" in changed.text
    finally:
        for run_ids in by_key.values():
            for run_id in run_ids:
                owner.cancel_ok(run_id)
        owner.close()


def test_an_account_flooding_the_queue_is_told_to_wait(
    server: Server, victim: Victim, figures
) -> None:
    owner = Client(server)
    created: list[str] = []
    try:
        for _ in range(40):
            answer = owner.submit(payload(victim.dataset_id, name="flood"))
            if answer.status_code != 201:
                break
            created.append(answer.json()["id"])
        figures.answer("queue flooding", answer, {429})
        assert answer.status_code == 429, answer.text
        assert answer.json()["detail"]["code"] == "too_many_queued_runs"
        assert 29 <= len(created) <= 31  # the cap is 30 queued (one may have started)
    finally:
        for run_id in created:
            owner.cancel_ok(run_id)
        owner.close()


def test_server_paths_are_not_in_answers(server: Server, figures) -> None:
    owner = Client(server)
    try:
        for base_model in ("/etc", "../../..", str(server.root), "~root/.ssh"):
            answer = owner.submit(payload("ds_missing", base_model=base_model))
            figures.answer("path disclosure", answer, {422})
            assert answer.status_code == 422
            assert str(server.root) not in answer.text
    finally:
        owner.close()
