"""Runs on a real Ray cluster of three loopback nodes (see ``conftest.py``).

Runs land on a node of their tier, and their log names it; a tier no node has keeps its run
waiting with a reason, logged when it changes, not each time the scheduler asks;
cancel frees the node for the next run; a paused run frees its node and resumes from the
checkpoint it saved; a node lost mid-training (its raylet SIGKILLed)
makes the run retry and complete on the other node of the tier with every step's metrics
exactly once. The lost-node test runs last: it replaces the node it kills.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from control_harness import Client, Server, payload, wait_until
from ray_cluster import RayCluster

pytestmark = pytest.mark.ray
REPLACEMENT_IP = "127.0.0.5"


def small_nodes(cluster: RayCluster) -> set[str]:
    return {node.ip for node in cluster.nodes if "tier:small" in node.resources}


def small_run(client: Client, dataset: Path, name: str, **training: int) -> dict:
    body = payload(client.dataset(dataset), name=name, gpu_tier="small")
    body["training"].update(training)
    return client.submit_ok(body)


def steps(client: Client, run_id: str) -> list[int]:
    return [row["step"] for row in client.metrics(run_id)]


def log_messages(client: Client, run_id: str, prefix: str) -> list[str]:
    """The run's log lines that start with ``prefix``, without their time."""
    lines = [line.split(" ", 1)[1] for line in client.logs(run_id).splitlines()]
    return [line for line in lines if line.startswith(prefix)]


def tiers(client: Client) -> dict[str, dict]:
    response = client.http.get("/tiers")
    assert response.status_code == 200, response.text
    return {tier["id"]: tier for tier in response.json()}


def test_a_run_lands_on_a_node_of_its_tier_and_delivers_its_bundle(
    ray_client: Client, ray_cluster: RayCluster, demo_dataset: Path
) -> None:
    run = small_run(ray_client, demo_dataset, "ray-lands")
    done = ray_client.wait_terminal(run["id"], timeout=240)
    assert done["status"] == "completed", done
    assert done["node"] in small_nodes(ray_cluster)
    assert log_messages(ray_client, run["id"], "placed on") == [f"placed on node {done['node']}"]
    assert steps(ray_client, run["id"]) == list(range(1, 7))
    # The bundle came back over the API, under the name the server chose.
    entry = ray_client.http.get("/hub").json()[0]
    assert entry["run_id"] == run["id"]
    assert entry["artifacts"]["lora"]["filename"] == "ray-lands-lora.zip"
    assert tiers(ray_client)["small"]["nodes_total"] == 2


def test_a_tier_no_node_has_keeps_its_run_waiting(ray_client: Client, demo_dataset: Path) -> None:
    body = payload(ray_client.dataset(demo_dataset), name="ray-nowhere", gpu_tier="big")
    run = ray_client.submit_ok(body)
    waiting = ray_client.wait_status(run["id"], "waiting_for_gpu", timeout=30)
    reason = wait_until(
        lambda: ray_client.run(run["id"]).get("waiting_reason"), timeout=30, what="a reason"
    )
    assert "no node of tier big" in reason
    time.sleep(5)  # Ray reports the request infeasible; tunery keeps waiting regardless
    assert ray_client.run(run["id"])["status"] == "waiting_for_gpu", waiting
    # Each reason is logged once, however many ticks asked (Ray may first call it busy).
    waits = log_messages(ray_client, run["id"], "waiting: ")
    assert waits[-1] == f"waiting: {reason}" and len(waits) <= 2, waits
    big = tiers(ray_client)["big"]
    assert (big["nodes_total"], big["nodes_free"]) == (0, 0)
    assert ray_client.cancel(run["id"]).status_code == 200
    assert ray_client.wait_terminal(run["id"])["status"] == "cancelled"


def test_nodes_of_a_tier_without_its_gpus_are_named_as_the_reason_to_wait(
    ray_client: Client, ray_server: Server, demo_dataset: Path
) -> None:
    """The probe's tier: nodes carry it, none has the GPU its runs ask for. The run waits
    saying so, /tiers counts no node it could use, and the server said so when it started."""
    body = payload(ray_client.dataset(demo_dataset), name="ray-no-gpu", gpu_tier="gpu")
    run = ray_client.submit_ok(body)
    ray_client.wait_status(run["id"], "waiting_for_gpu", timeout=30)

    def lacking() -> str | None:
        reason = ray_client.run(run["id"]).get("waiting_reason") or ""
        return reason if "GPU" in reason else None

    reason = wait_until(lacking, timeout=60, what="the reason")
    assert reason.startswith("2 nodes of tier gpu in the cluster, but none has the 1 GPU"), reason
    gpu = tiers(ray_client)["gpu"]
    assert (gpu["nodes_total"], gpu["nodes_free"]) == (0, 0)
    assert "2 nodes of tier gpu in the cluster, but none has the 1 GPU" in ray_server.log()
    assert ray_client.cancel(run["id"]).status_code == 200
    assert ray_client.wait_terminal(run["id"])["status"] == "cancelled"


def test_cancel_frees_the_node_for_the_next_run(ray_client: Client, demo_dataset: Path) -> None:
    long = {"max_steps": 400, "checkpoint_every_steps": 400}
    first = small_run(ray_client, demo_dataset, "ray-first", **long)
    second = small_run(ray_client, demo_dataset, "ray-second", **long)
    ray_client.wait_step(first["id"], 1, timeout=180)
    ray_client.wait_step(second["id"], 1, timeout=180)
    third = small_run(ray_client, demo_dataset, "ray-third")
    waiting = ray_client.wait_status(third["id"], "waiting_for_gpu", timeout=30)
    assert tiers(ray_client)["small"]["nodes_free"] == 0, waiting
    freed = ray_client.run(first["id"])["node"]

    assert ray_client.cancel(first["id"]).status_code == 200
    assert ray_client.wait_terminal(first["id"])["status"] == "cancelled"
    done = ray_client.wait_terminal(third["id"], timeout=240)
    assert done["status"] == "completed", done
    assert done["node"] == freed
    ray_client.cancel_ok(second["id"])


def test_submissions_naming_no_tier_take_the_clusters_default_tier(
    ray_client: Client, ray_server: Server, demo_dataset: Path
) -> None:
    """The server lists no nodes (a Ray cluster's come and go): the backend, not the nodes
    setting, names the default tier (the first configured), for every way in."""
    body = payload(ray_client.dataset(demo_dataset), name="ray-default")
    del body["gpu_tier"]
    estimate = ray_client.http.post("/runs/estimate", json=body)
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["tier"] == "small"
    run = ray_client.submit_ok(body)
    assert run["tier"] == "small"
    ray_client.cancel_ok(run["id"])
    job = httpx.post(
        f"{ray_server.url}/v1/fine_tuning/jobs",
        json={"model": "tunery/demo-tiny", "training_file": body["dataset_ids"][0]},
        headers={"Authorization": f"Bearer {ray_client.token}"},
        timeout=30,
    )
    assert job.status_code == 200, job.text
    assert ray_client.run(job.json()["id"])["tier"] == "small"
    ray_client.cancel_ok(job.json()["id"])


def test_a_paused_run_frees_its_node_and_resumes_from_its_checkpoint_on_any_node(
    ray_client: Client, demo_dataset: Path
) -> None:
    run = small_run(ray_client, demo_dataset, "ray-pause", max_steps=40, checkpoint_every_steps=10)
    ray_client.wait_step(run["id"], 3, timeout=240)
    asked = ray_client.http.post(f"/runs/{run['id']}/pause")
    assert asked.status_code == 200, asked.text
    ray_client.wait_status(run["id"], "paused", timeout=120)
    # The attempt's placement group is removed once its worker has exited.
    wait_until(
        lambda: tiers(ray_client)["small"]["nodes_free"] == 2, timeout=60, what="a free node"
    )
    log = ray_client.logs(run["id"])
    at = re.search(r"paused after step (\d+)", log)
    assert at is not None, log
    credits = ray_client.run(run["id"])["metrics"]["credits"]
    time.sleep(2)
    assert ray_client.run(run["id"])["metrics"]["credits"] == credits  # nothing accrues

    resumed = ray_client.http.post(f"/runs/{run['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    done = ray_client.wait_terminal(run["id"], timeout=300)
    assert done["status"] == "completed", done
    assert steps(ray_client, run["id"]) == list(range(1, 41))
    # The second attempt, on whichever node, started from the checkpoint the pause saved
    # and uploaded (nodes share no disk), not from the start.
    assert f"resumed from the checkpoint at step {at[1]}" in ray_client.logs(run["id"])


def test_a_lost_node_retries_on_the_other_node_with_every_step_once(
    ray_client: Client, ray_cluster: RayCluster, demo_dataset: Path
) -> None:
    run = small_run(ray_client, demo_dataset, "ray-lost", max_steps=60, checkpoint_every_steps=5)
    training = ray_client.wait_step(run["id"], 12, timeout=240)
    lost = training["node"]
    ray_cluster.kill_node(lost)
    try:
        ray_client.wait_status(run["id"], "retrying", timeout=90)
        done = ray_client.wait_terminal(run["id"], timeout=300)
        assert done["status"] == "completed", done
        assert done["node"] in small_nodes(ray_cluster) - {lost}
        assert done["attempt"] == 2
        assert steps(ray_client, run["id"]) == list(range(1, 61))
        # The nodes share no disk: the second attempt resumed from a checkpoint the first
        # uploaded to the server, not from the start.
        fetched = re.search(r"fetched the checkpoint at step (\d+)", ray_client.logs(run["id"]))
        assert fetched is not None and int(fetched[1]) >= 10
        assert f"resumed from the checkpoint at step {fetched[1]}" in ray_client.logs(run["id"])
    finally:
        # Later sessions' tests need two nodes of the tier again.
        gone = next(n for n in ray_cluster.nodes if n.ip == lost)
        ray_cluster.nodes.remove(gone)
        ray_cluster.add_node(replace(gone, ip=REPLACEMENT_IP))
