"""Submit → first training step: the Ray backend against the local node pool.

Two `tunery serve` processes on fresh data dirs, one with the local pool (one `cpu` node)
and one pointed at a Ray cluster of two loopback nodes (a head, and one node offering
`tier:cpu`) that this script starts and stops by pid. The same run (the demo model, a few
steps) is submitted to each in turn, interleaved, `--pairs` times; for each submission the
time from the POST to the first metrics event is taken from the run's event stream. Prints
each pair, the medians and the ratio Ray / local.

``python bench/ray_startup.py [--pairs 5] [--quick] [--model-dir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "control"), str(REPO / "tests" / "ray")]

from control_harness import (  # noqa: E402  (the test harness is on the path just above)
    Client,
    free_port,
    payload,
    prepare_root,
    running_server,
    server_env,
)
from ray_cluster import NodeSpec, RayCluster, running_cluster  # noqa: E402

CACHE = REPO / "bench" / ".cache"


def demo_model(explicit: Path | None) -> Path:
    from tunery.catalog.demo import cached_demo_model

    return explicit.resolve() if explicit is not None else cached_demo_model(CACHE)


def first_step_seconds(client: Client, dataset_id: str, name: str) -> float:
    """Seconds from the POST of the run to its first metrics event; the run is then
    cancelled."""
    started = time.perf_counter()
    run = client.submit_ok(payload(dataset_id, name, training={"max_steps": 30}))
    first = client.events(run["id"], stop=lambda event: event.kind == "metrics", timeout=300)
    elapsed = time.perf_counter() - started
    assert first.events and first.events[-1].kind == "metrics", first.events
    client.cancel_ok(run["id"])
    client.wait_terminal(run["id"], timeout=120)
    return elapsed


@contextlib.contextmanager
def servers(root: Path, model_dir: Path, cluster: RayCluster) -> Iterator[tuple[Client, Client]]:
    # One torch thread on both sides, as the Ray node has (TUNERY_TORCH_THREADS below).
    local_node = {"name": "l0", "tier": "cpu", "threads": 1}
    local_root = prepare_root(root / "local", model_dir, nodes=[local_node])
    ray_root = prepare_root(
        root / "ray",
        model_dir,
        nodes=[],
        cluster={"kind": "ray", "address": cluster.address},
    )
    ray_env = {**server_env(ray_root), **{k: v for k, v in cluster.env.items() if "RAY_" in k}}
    with (
        running_server(local_root, server_env(local_root)) as local,
        running_server(ray_root, ray_env) as on_ray,
    ):
        yield Client(local), Client(on_ray)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 pairs (for CI)")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    pairs = 2 if args.quick else args.pairs
    model_dir = demo_model(args.model_dir)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-ray-") as scratch:
        root = Path(scratch)
        node_home = root / "node"
        (node_home / "models").mkdir(parents=True)
        (node_home / "models" / "demo-tiny").symlink_to(model_dir, target_is_directory=True)
        nodes = [
            NodeSpec("127.0.0.2", num_cpus=1),
            NodeSpec(
                "127.0.0.3",
                {"tier:cpu": 1},
                env={"TUNERY_DATA_DIR": str(node_home), "TUNERY_TORCH_THREADS": "1"},
            ),
        ]
        with (
            running_cluster(root, free_port(), nodes) as cluster,
            servers(root, model_dir, cluster) as (local, on_ray),
        ):
            datasets = {
                "local": local.dataset(REPO / "examples" / "demo-dataset.jsonl"),
                "ray": on_ray.dataset(REPO / "examples" / "demo-dataset.jsonl"),
            }
            results: dict[str, list[float]] = {"local": [], "ray": []}
            for index in range(pairs):
                # Alternate which goes first, so drift on the machine hits both alike.
                order = [("local", local), ("ray", on_ray)]
                for kind, client in order if index % 2 == 0 else order[::-1]:
                    seconds = first_step_seconds(client, datasets[kind], f"bench-{index}")
                    results[kind].append(seconds)
                print(
                    f"pair {index + 1}: local {results['local'][-1]:.2f} s, "
                    f"ray {results['ray'][-1]:.2f} s"
                )
    medians = {kind: statistics.median(values) for kind, values in results.items()}
    ratio = medians["ray"] / medians["local"]
    print(
        f"submit → first step, median of {pairs}: local {medians['local']:.2f} s, "
        f"ray {medians['ray']:.2f} s, ratio ray/local {ratio:.2f}x"
    )
    if args.json is not None:
        figures: dict[str, Any] = {"pairs": pairs, "seconds": results, "ratio": ratio}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
