"""A server paused (SIGSTOP) longer than the lease, mid-training, then resumed.

Nothing could report in while it was stopped; on resume the scheduler sees the gap and
gives live attempts a fresh lease, as at start-up, instead of killing healthy workers. The
run must end as an uninterrupted one: completed on its first attempt, every step once, one
charge. (Server and worker SIGKILLs are covered in tests/control/test_recovery.py.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from control_harness import Client, payload, prepare_root, running_server, server_env

LEASE_SECONDS = 4
STEPS = 12


def test_a_server_paused_past_the_lease_keeps_its_healthy_workers(
    tmp_path: Path, demo_model_dir: Path, demo_dataset: Path, figures
) -> None:
    root = prepare_root(tmp_path / "data", demo_model_dir, lease_seconds=LEASE_SECONDS)
    with running_server(root, server_env(root)) as server:
        api = Client(server)
        try:
            dataset_id = api.dataset(demo_dataset)
            run_id = api.submit_ok(payload(dataset_id, "paused", training={"max_steps": STEPS}))[
                "id"
            ]
            api.wait_step(run_id, 2, timeout=240)
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            time.sleep(2 * LEASE_SECONDS + 1)
            os.kill(server.process.pid, signal.SIGCONT)
            done = api.wait_terminal(run_id, timeout=300)
            steps = [row["step"] for row in api.metrics(run_id)]
            charges = server.query(
                "SELECT COUNT(*) FROM ledger WHERE run_id = ? AND kind = 'charge'", run_id
            )[0][0]
        finally:
            api.close()
    held = (done["status"], done["attempt"], charges) == ("completed", 1, 1)
    figures.attack(
        "pauses and kills", refused=held, lost=len(set(range(1, STEPS + 1)) - set(steps))
    )
    assert (done["status"], done["attempt"]) == ("completed", 1), done
    assert steps == list(range(1, STEPS + 1))
    assert charges == 1
