"""Authentication and isolation: 401 without a valid token, 404 for another account's ids."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from control_harness import Client, Server, add_account, group_gone, payload, wait_until

ROUTES = [
    ("GET", "/runs"),
    ("POST", "/runs"),
    ("GET", "/runs/run_x"),
    ("DELETE", "/runs/run_x"),
    ("POST", "/runs/run_x/cancel"),
    ("GET", "/runs/run_x/events"),
    ("GET", "/runs/run_x/metrics"),
    ("GET", "/runs/run_x/logs"),
    ("GET", "/datasets"),
    ("POST", "/datasets"),
    ("GET", "/datasets/ds_x"),
    ("DELETE", "/datasets/ds_x"),
    ("GET", "/tiers"),
    ("GET", "/models"),
    ("GET", "/credits"),
    ("GET", "/hub"),
    ("GET", "/hub/hub_x"),
    ("DELETE", "/hub/hub_x"),
    ("POST", "/hub/hub_x/artifacts/lora/url"),
]


@pytest.fixture(scope="module")
def owner(shared_server: Server) -> Client:
    client = Client(shared_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stranger(shared_server: Server) -> Client:
    client = Client(shared_server, add_account(shared_server, "stranger"))
    yield client
    client.close()


def test_healthz_needs_no_token(shared_server: Server) -> None:
    response = httpx.get(f"{shared_server.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer tny_wrong"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "tny_no_scheme"},
    ],
    ids=["none", "wrong", "empty", "basic", "no-scheme"],
)
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_missing_or_wrong_token_is_401(
    shared_server: Server, headers: dict[str, str], method: str, path: str
) -> None:
    response = httpx.request(
        method, f"{shared_server.url}/api/v1{path}", headers=headers, json={}, timeout=10
    )
    assert response.status_code == 401, response.text
    assert response.json()["detail"]["code"] == "unauthorized"


def test_rejected_requests_create_nothing(shared_server: Server, demo_dataset: Path) -> None:
    url = f"{shared_server.url}/api/v1"
    with demo_dataset.open("rb") as file:
        upload = httpx.post(f"{url}/datasets", files={"file": (demo_dataset.name, file)})
    assert upload.status_code == 401
    submit = httpx.post(
        f"{url}/runs", json=payload("ds_x"), headers={"Authorization": "Bearer nope"}
    )
    assert submit.status_code == 401
    assert shared_server.query("SELECT id FROM runs") == []


def test_another_accounts_ids_are_404_everywhere(
    shared_server: Server, owner: Client, stranger: Client, demo_dataset: Path
) -> None:
    dataset_id = owner.dataset(demo_dataset)
    run = owner.submit_ok(payload(dataset_id, name="private"))
    run_id = run["id"]
    try:
        for method, path in [
            ("GET", f"/runs/{run_id}"),
            ("POST", f"/runs/{run_id}/cancel"),
            ("GET", f"/runs/{run_id}/events"),
            ("GET", f"/runs/{run_id}/metrics"),
            ("GET", f"/runs/{run_id}/logs"),
            ("DELETE", f"/runs/{run_id}"),
            ("GET", f"/datasets/{dataset_id}"),
            ("DELETE", f"/datasets/{dataset_id}"),
        ]:
            response = stranger.http.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["detail"]["code"] == "not_found"
            assert run_id not in response.text or "no run" in response.text
        assert stranger.runs() == []
        assert stranger.http.get("/datasets").json() == []
        # Using the owner's dataset id in a submission is an unknown id, not a leak.
        blocked = stranger.submit(payload(dataset_id))
        assert blocked.status_code == 422
        assert [p["field"] for p in blocked.json()["detail"]["problems"]] == ["dataset_ids.0"]
        # Nothing the stranger did touched the run or the dataset.
        mine = owner.run(run_id)
        assert mine["status"] not in {"cancelled", "failed"}
        assert mine["cancel_requested"] is False
        assert owner.http.get(f"/datasets/{dataset_id}").status_code == 200
        assert [r["id"] for r in owner.runs()] == [run_id]
    finally:
        owner.cancel_ok(run_id)
    # The owner still reaches every route of the (now cancelled) run.
    for path in ("", "/metrics", "/logs", "/events"):
        assert owner.http.get(f"/runs/{run_id}{path}").status_code == 200, path
    for row in shared_server.attempts(run_id):
        if row["pid"]:
            group_gone(row["pid"])
    wait_until(lambda: owner.nodes_free() == 1, timeout=15, what="the node to be free")
    assert stranger.http.delete(f"/runs/{run_id}").status_code == 404
    assert owner.http.delete(f"/runs/{run_id}").status_code == 204
    assert owner.http.get(f"/runs/{run_id}").status_code == 404


def test_unknown_ids_are_404(owner: Client) -> None:
    for method, path in [
        ("GET", "/runs/run_0000000000000000"),
        ("POST", "/runs/run_0000000000000000/cancel"),
        ("GET", "/runs/run_0000000000000000/events"),
        ("GET", "/runs/run_0000000000000000/metrics"),
        ("GET", "/runs/run_0000000000000000/logs"),
        ("DELETE", "/runs/run_0000000000000000"),
        ("GET", "/datasets/ds_0000000000000000"),
        ("DELETE", "/datasets/ds_0000000000000000"),
    ]:
        response = owner.http.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
