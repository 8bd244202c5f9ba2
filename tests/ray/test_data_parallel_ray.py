"""Data-parallel runs on the Ray cluster of ``conftest.py``.

A run of the two-process tier ``pair`` is held on one node by a placement group of two
bundles packed together (``STRICT_PACK``); killing that node mid-training makes the run retry
on the other node, resume from the checkpoint it uploaded, and complete. A GPU tier's worker
sees exactly the GPUs its bundles hold; a tier whose GPUs no node holds together waits, and
says why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from control_harness import Client, payload, wait_until
from ray_cluster import RayCluster

from tunery.backends.ray import NAME_PREFIX

pytestmark = pytest.mark.ray
REPLACEMENT_IP = "127.0.0.6"


def pair_nodes(cluster: RayCluster) -> set[str]:
    return {node.ip for node in cluster.nodes if "tier:pair" in node.resources}


def in_driver(cluster: RayCluster, script: str) -> Any:
    """Run ``script`` in a Python process connected to the cluster (as ``ray``) and return
    what it hands to ``answer(value)``. A process of its own: Ray reads its authentication
    mode once, when a process imports it, and this one may have imported Ray before the
    cluster's token existed. The answer travels in a file, not on stdout, where Ray's own
    lines may come after it."""
    with tempfile.TemporaryDirectory(prefix="tunery-driver-") as scratch:
        answer_file = Path(scratch) / "answer.json"
        connect = (
            "import json, ray\n"
            "def answer(value):\n"
            f"    open({str(answer_file)!r}, 'w').write(json.dumps(value))\n"
            f"ray.init(address={cluster.address!r}, namespace='tests', log_to_driver=False)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", connect + textwrap.dedent(script)],
            env={**os.environ, **cluster.env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert answer_file.exists(), f"no answer:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return json.loads(answer_file.read_text())


def groups_of_run(cluster: RayCluster, tier: str) -> list[dict[str, Any]]:
    prefix = f"{NAME_PREFIX}{tier}:"
    return in_driver(
        cluster,
        f"""
        from ray.util.placement_group import placement_group_table
        groups = placement_group_table().values()
        answer([
            group for group in groups
            if group["name"].startswith({prefix!r}) and group["state"] == "CREATED"
        ])
        """,
    )


def test_a_two_process_run_is_packed_on_one_node_and_a_lost_node_resumes_it_elsewhere(
    ray_client: Client, ray_cluster: RayCluster, demo_dataset: Path
) -> None:
    body = payload(ray_client.dataset(demo_dataset), "ray-pair", gpu_tier="pair")
    # Long enough that a fast machine is still training when the node is killed.
    body["training"].update(max_steps=120, checkpoint_every_steps=4)
    run = ray_client.submit_ok(body)
    training = ray_client.wait_step(run["id"], 1, timeout=300)
    lost = training["node"]
    assert lost in pair_nodes(ray_cluster)
    (group,) = groups_of_run(ray_cluster, "pair")
    assert group["strategy"] == "STRICT_PACK"
    assert [bundle["tier:pair"] for bundle in group["bundles"].values()] == [0.5, 0.5]
    assert len(set(group["bundles_to_node_id"].values())) == 1
    assert "training on 2 processes of this node" in ray_client.logs(run["id"])

    ray_client.wait_step(run["id"], 9, timeout=300)
    ray_cluster.kill_node(lost)
    try:
        ray_client.wait_status(run["id"], "retrying", timeout=90)
        done = ray_client.wait_terminal(run["id"], timeout=400)
        assert done["status"] == "completed", done
        assert done["node"] in pair_nodes(ray_cluster) - {lost}
        assert done["attempt"] == 2
        assert {row["step"] for row in ray_client.metrics(run["id"])} == set(range(1, 121))
        fetched = re.search(r"fetched the checkpoint at step (\d+)", ray_client.logs(run["id"]))
        assert fetched is not None and int(fetched[1]) >= 8
        assert f"resumed from the checkpoint at step {fetched[1]}" in ray_client.logs(run["id"])
    finally:
        # Later tests need two nodes of the tiers again.
        gone = next(node for node in ray_cluster.nodes if node.ip == lost)
        ray_cluster.nodes.remove(gone)
        ray_cluster.add_node(replace(gone, ip=REPLACEMENT_IP))


def test_the_worker_sees_the_gpus_its_bundles_hold(ray_cluster: RayCluster) -> None:
    visible = in_driver(
        ray_cluster,
        """
        import os
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        from tunery.backends.ray import show_group_gpus

        @ray.remote(num_cpus=0)
        def visible_gpus_in_the_group():
            show_group_gpus()
            return os.environ["CUDA_VISIBLE_DEVICES"]

        group = placement_group([{"GPU": 1.0, "tier:duo": 0.5}] * 2, strategy="STRICT_PACK")
        try:
            ray.get(group.ready(), timeout=60)
            in_group = PlacementGroupSchedulingStrategy(group, 0)
            task = visible_gpus_in_the_group.options(scheduling_strategy=in_group).remote()
            answer(ray.get(task, timeout=120))
        finally:
            remove_placement_group(group)
        """,
    )
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
