"""A Ray cluster of three nodes on loopback, and a tunery server that runs its attempts there.

The cluster (one per session): a head that Ray counts two GPUs on (none exist; Ray only hands
out their ids) offering ``tier:duo`` and ``tier:quad``, and two worker nodes that each offer
one unit of ``tier:small``, of ``tier:pair`` (two CPU processes) and of ``tier:gpu`` (but no
GPU, which the ``gpu`` tier asks for). Each worker node has its own working directory,
holding the node's installed models (``TUNERY_DATA_DIR=<node>/``, the demo model under
``models/``), and never sees the server's data dir: datasets come over the API, bundles and
checkpoints go back over it (no ``checkpoint_dir``: the nodes share no disk), and a retried
attempt downloads its run's newest checkpoint from the server. The tunery tier ``big`` has
no node at all. Everything is stopped by pid at teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import Client, Server, free_port, prepare_root, running_server, server_env
from ray_cluster import NodeSpec, RayCluster, running_cluster


def node_dir(root: Path, demo_model_dir: Path, name: str) -> Path:
    """A node's own working directory with the demo model installed in its catalog."""
    path = root / name
    (path / "models").mkdir(parents=True)
    (path / "models" / "demo-tiny").symlink_to(demo_model_dir, target_is_directory=True)
    return path


@pytest.fixture(scope="session")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[RayCluster]:
    root = tmp_path_factory.mktemp("ray-cluster")
    nodes = [NodeSpec("127.0.0.2", {"tier:duo": 1, "tier:quad": 1}, num_cpus=1, num_gpus=2)]
    for index, ip in enumerate(("127.0.0.3", "127.0.0.4")):
        home = node_dir(root, demo_model_dir, f"node-{index}")
        nodes.append(
            NodeSpec(
                ip,
                {"tier:small": 1, "tier:pair": 1, "tier:gpu": 1},
                num_cpus=1,
                env={"TUNERY_DATA_DIR": str(home), "TUNERY_TORCH_THREADS": "1"},
            )
        )
    with running_cluster(root, free_port(), nodes) as cluster:
        yield cluster


def ray_settings(cluster: RayCluster) -> dict[str, Any]:
    return {
        "tiers": [
            {"id": "small", "name": "Small", "credits_per_minute": 1.0, "gpus": 0},
            {"id": "big", "name": "Big", "credits_per_minute": 1.0, "gpus": 0},
            # No gpus given: a run asks for one GPU, which no node of the tier has.
            {"id": "gpu", "name": "GPU", "credits_per_minute": 1.0},
            {"id": "pair", "name": "Pair", "credits_per_minute": 1.0, "gpus": 0, "processes": 2},
            {"id": "duo", "name": "Duo", "credits_per_minute": 1.0, "gpus": 2},
            {"id": "quad", "name": "Quad", "credits_per_minute": 1.0, "gpus": 4},
        ],
        "nodes": [],
        "cluster": {"kind": "ray", "address": cluster.address},
        # A lost node is noticed by Ray (about 15 s) or by the lease, whichever is first.
        "lease_seconds": 20,
        "retry_backoff_seconds": 1,
        "cancel_grace_seconds": 1,
    }


@pytest.fixture
def ray_server(tmp_path: Path, demo_model_dir: Path, ray_cluster: RayCluster) -> Iterator[Server]:
    """A tunery server whose attempts run on the cluster; its data dir is not the nodes'."""
    root = prepare_root(tmp_path / "server", demo_model_dir, **ray_settings(ray_cluster))
    env = {**server_env(root), **{k: v for k, v in ray_cluster.env.items() if k.startswith("RAY_")}}
    with running_server(root, env) as server:
        yield server


@pytest.fixture
def ray_client(ray_server: Server) -> Iterator[Client]:
    client = Client(ray_server)
    yield client
    with contextlib.suppress(Exception):
        for run in client.runs():
            if run["status"] not in {"completed", "failed", "cancelled"}:
                client.cancel(run["id"])
    client.close()


@pytest.fixture
def client_of() -> Iterator[Callable[[Server, str], Client]]:
    clients: list[Client] = []

    def make(server: Server, token: str) -> Client:
        clients.append(Client(server, token))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
