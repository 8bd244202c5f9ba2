"""Cancel is idempotent and answers 409 only for a run that finished on its own, even when
it races with other requests or with the scheduler."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from control_harness import Client, Server, assert_one_terminal, group_gone, payload, wait_until

ROUNDS = 10
CONCURRENT = 8


def terminate_all(server: Server, api: Client) -> None:
    for run in api.runs():
        api.cancel_ok(run["id"])
    for pid in server.worker_pids():
        group_gone(pid, timeout=15)
    wait_until(lambda: api.nodes_free() == 1, timeout=15, what="the node to be free")


def test_concurrent_cancels_of_one_run_all_succeed(
    shared_server: Server, demo_dataset: Path
) -> None:
    """Several cancels of the same run at once (a double click, a retrying client): each
    answers 200 with the cancelled run; none gets 'already cancelled' as a 409."""
    api = Client(shared_server)
    try:
        dataset_id = api.dataset(demo_dataset)

        def cancel(run_id: str) -> httpx.Response:
            with httpx.Client(
                base_url=f"{shared_server.url}/api/v1",
                headers={"Authorization": f"Bearer {api.token}"},
                timeout=30,
            ) as http:
                return http.post(f"/runs/{run_id}/cancel")

        failures = []
        for round_ in range(ROUNDS):
            run_id = api.submit_ok(payload(dataset_id, f"double-click-{round_}"))["id"]
            with ThreadPoolExecutor(CONCURRENT) as pool:
                responses = list(pool.map(cancel, [run_id] * CONCURRENT))
            failures += [(r.status_code, r.text) for r in responses if r.status_code != 200]
            assert api.run(run_id)["status"] == "cancelled"
            assert_one_terminal(api.events(run_id).events, "cancelled")
        assert failures == []
    finally:
        terminate_all(shared_server, api)
        api.close()


def test_cancel_right_after_submit_never_conflicts(
    shared_server: Server, demo_dataset: Path
) -> None:
    """The scheduler places a fresh run (queued → waiting_for_gpu) while the owner cancels
    it; the cancel must win or follow, never answer 409 for a run that is not finished."""
    api = Client(shared_server)
    try:
        dataset_id = api.dataset(demo_dataset)
        failures = []
        for round_ in range(30):
            run_id = api.submit_ok(payload(dataset_id, f"quick-{round_}"))["id"]
            response = api.cancel(run_id)
            if response.status_code != 200:
                failures.append((response.status_code, response.text))
        assert failures == []
    finally:
        terminate_all(shared_server, api)
        api.close()
