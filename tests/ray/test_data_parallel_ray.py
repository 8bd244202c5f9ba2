"""Data-parallel runs on the Ray cluster of ``conftest.py``.

A run of the two-process tier ``pair`` is held on one node by a placement group of two
bundles packed together (``STRICT_PACK``); killing that node mid-training makes the run retry
on the other node, resume from the checkpoint it uploaded, and complete. A GPU tier's worker
sees exactly the GPUs its bundles hold; a tier whose GPUs no node holds together waits, and
says why.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import ray
from control_harness import Client, payload, wait_until
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from ray_cluster import RayCluster

from tunery.backends.ray import NAME_PREFIX, show_group_gpus

pytestmark = pytest.mark.ray
REPLACEMENT_IP = "127.0.0.6"


def pair_nodes(cluster: RayCluster) -> set[str]:
    return {node.ip for node in cluster.nodes if "tier:pair" in node.resources}


@pytest.fixture
def driver(ray_cluster: RayCluster) -> Iterator[None]:
    """This test process as a client of the cluster (its own namespace)."""
    saved = dict(os.environ)
    os.environ.update(ray_cluster.env)
    ray.init(address=ray_cluster.address, namespace="tests", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def groups_of_run(tier: str) -> list[dict]:
    return [
        group
        for group in placement_group_table().values()
        if group["name"].startswith(f"{NAME_PREFIX}{tier}:") and group["state"] == "CREATED"
    ]


def test_a_two_process_run_is_packed_on_one_node_and_a_lost_node_resumes_it_elsewhere(
    ray_client: Client, ray_cluster: RayCluster, demo_dataset: Path, driver: None
) -> None:
    body = payload(ray_client.dataset(demo_dataset), "ray-pair", gpu_tier="pair")
    body["training"].update(max_steps=40, checkpoint_every_steps=4)
    run = ray_client.submit_ok(body)
    training = ray_client.wait_step(run["id"], 9, timeout=300)
    lost = training["node"]
    assert lost in pair_nodes(ray_cluster)
    (group,) = groups_of_run("pair")
    assert group["strategy"] == "STRICT_PACK"
    assert [bundle["tier:pair"] for bundle in group["bundles"].values()] == [0.5, 0.5]
    assert len(set(group["bundles_to_node_id"].values())) == 1
    assert "training on 2 processes of this node" in ray_client.logs(run["id"])

    ray_cluster.kill_node(lost)
    try:
        ray_client.wait_status(run["id"], "retrying", timeout=90)
        done = ray_client.wait_terminal(run["id"], timeout=400)
        assert done["status"] == "completed", done
        assert done["node"] in pair_nodes(ray_cluster) - {lost}
        assert done["attempt"] == 2
        assert {row["step"] for row in ray_client.metrics(run["id"])} == set(range(1, 41))
        fetched = re.search(r"fetched the checkpoint at step (\d+)", ray_client.logs(run["id"]))
        assert fetched is not None and int(fetched[1]) >= 8
        assert f"resumed from the checkpoint at step {fetched[1]}" in ray_client.logs(run["id"])
    finally:
        # Later tests need two nodes of the tiers again.
        gone = next(node for node in ray_cluster.nodes if node.ip == lost)
        ray_cluster.nodes.remove(gone)
        ray_cluster.add_node(replace(gone, ip=REPLACEMENT_IP))


@ray.remote(num_cpus=0)
def visible_gpus_in_the_group() -> str:
    show_group_gpus()
    return os.environ["CUDA_VISIBLE_DEVICES"]


def test_the_worker_sees_the_gpus_its_bundles_hold(driver: None) -> None:
    group = placement_group([{"GPU": 1.0, "tier:duo": 0.5}] * 2, strategy="STRICT_PACK")
    try:
        ray.get(group.ready(), timeout=60)
        visible = ray.get(
            visible_gpus_in_the_group.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0)
            ).remote(),
            timeout=120,
        )
    finally:
        remove_placement_group(group)
    assert sorted(visible.split(",")) == ["0", "1"]


def test_a_tier_whose_gpus_no_node_holds_together_waits_and_says_why(
    ray_client: Client, demo_dataset: Path
) -> None:
    body = payload(ray_client.dataset(demo_dataset), "ray-quad", gpu_tier="quad")
    run = ray_client.submit_ok(body)
    ray_client.wait_status(run["id"], "waiting_for_gpu", timeout=30)
    expected = (
        "1 node of tier quad in the cluster, but none has the 4 GPUs a run of the tier "
        "trains on together"
    )
    wait_until(
        lambda: expected in (ray_client.run(run["id"]).get("waiting_reason") or ""),
        timeout=60,
        what="the reason",
    )
    assert ray_client.cancel(run["id"]).status_code == 200
    assert ray_client.wait_terminal(run["id"])["status"] == "cancelled"
