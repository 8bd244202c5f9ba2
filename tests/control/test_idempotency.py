"""Concurrent submissions with retried Idempotency-Keys: no run lost, none duplicated."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from control_harness import Client, Server, add_account, group_gone, payload, wait_until

KEYS = 6
RETRIES = 4  # each key sent this many times at once, as a client retrying on timeouts
UNKEYED = 3  # plain submissions in the same burst: each is its own run


def test_concurrent_retried_submissions(shared_server: Server, demo_dataset: Path) -> None:
    api = Client(shared_server)
    try:
        dataset_id = api.dataset(demo_dataset)
        requests = [(f"key-{k}", f"run-{k}") for k in range(KEYS) for _ in range(RETRIES)]
        requests += [(None, f"plain-{n}") for n in range(UNKEYED)]

        def send(item: tuple[str | None, str]) -> tuple[str | None, httpx.Response]:
            key, name = item
            headers = {"Authorization": f"Bearer {api.token}"}
            if key:
                headers["Idempotency-Key"] = key
            with httpx.Client(base_url=f"{shared_server.url}/api/v1", timeout=60) as http:
                return key, http.post("/runs", json=payload(dataset_id, name), headers=headers)

        with ThreadPoolExecutor(len(requests)) as pool:
            results = list(pool.map(send, requests))

        errors = [(key, r.status_code, r.text) for key, r in results if r.status_code >= 300]
        assert errors == []
        by_key: dict[str, set[str]] = {}
        plain: list[str] = []
        for key, response in results:
            run = response.json()
            if key is None:
                plain.append(run["id"])
            else:
                by_key.setdefault(key, set()).add(run["id"])
                assert run["name"] == f"run-{key.removeprefix('key-')}"
        # Every key made exactly one run; every plain submission made its own.
        assert {key: len(ids) for key, ids in by_key.items()} == {
            f"key-{k}": 1 for k in range(KEYS)
        }
        expected = {next(iter(ids)) for ids in by_key.values()} | set(plain)
        assert len(expected) == KEYS + UNKEYED
        assert {run["id"] for run in api.runs()} == expected
        rows = shared_server.query("SELECT id, idempotency_key FROM runs")
        assert len(rows) == KEYS + UNKEYED
        # One 'queued' event per run: a retried submission wrote no second history.
        for run_id in expected:
            queued = shared_server.query(
                "SELECT id FROM run_events WHERE run_id = ? AND kind = 'status' "
                "AND json_extract(data, '$.status') = 'queued'",
                run_id,
            )
            assert len(queued) == 1, run_id

        # A retry after the burst still answers with the same run.
        again = api.submit_ok(payload(dataset_id, "run-0"), key="key-0")
        assert again["id"] in by_key["key-0"]
        assert len(api.runs()) == KEYS + UNKEYED
    finally:
        for run in api.runs():
            api.cancel_ok(run["id"])
        for pid in shared_server.worker_pids():
            group_gone(pid)
        wait_until(lambda: api.nodes_free() == 1, timeout=15, what="the node to be free")
        api.close()


def test_keys_are_per_account(shared_server: Server, demo_dataset: Path) -> None:
    first = Client(shared_server)
    second = Client(shared_server, add_account(shared_server, "second"))
    try:
        mine = first.submit_ok(payload(first.dataset(demo_dataset), "mine"), key="shared-key")
        theirs = second.submit_ok(payload(second.dataset(demo_dataset), "theirs"), key="shared-key")
        assert mine["id"] != theirs["id"]
        assert theirs["name"] == "theirs"
    finally:
        for client in (first, second):
            for run in client.runs():
                client.cancel_ok(run["id"])
        for pid in shared_server.worker_pids():
            group_gone(pid)
        first.close()
        second.close()
