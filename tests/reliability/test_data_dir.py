"""Another user of the same machine: the data dir holds every tenant's datasets, checkpoints
and adapters, so nothing in it may be readable by anyone but the server's user.

A real ``tunery serve`` creates its data dir, takes a dataset, trains a run until its first
checkpoint and is cancelled; then every folder under the data dir must be 0700 and every
file 0600. A server started on a folder others can read says so when it starts.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from control_harness import (
    Client,
    payload,
    running_server,
    server_env,
    wait_until,
    write_settings,
)

from tunery.server import OWNER_ONLY

ADMINS_OWN = ("models", "tunery.yaml")
"""What the test writes into the data dir as the admin would, with the test's own umask."""


def exposed(root: Path) -> list[str]:
    """What under ``root`` (itself included) another user could read or enter."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(folder) / name
            if path.relative_to(root).parts[:1] in [(own,) for own in ADMINS_OWN]:
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & OWNER_ONLY:
                found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return sorted(set(found))


def test_a_fresh_data_dir_is_the_server_users_alone(
    tmp_path: Path, demo_model_dir: Path, demo_dataset: Path, figures
) -> None:
    root = tmp_path / "fresh" / "data"  # the server creates it
    with running_server(root, server_env(root), log_dir=tmp_path) as server:
        (root / "models").mkdir()
        (root / "models" / "demo-tiny").symlink_to(demo_model_dir, target_is_directory=True)
        write_settings(root, nodes=[{"name": "local-0", "tier": "cpu"}])
        server.stop()
        server.start()  # with the settings and the model in place
        client = Client(server)
        try:
            dataset = client.dataset(demo_dataset)
            run = client.submit_ok(
                payload(
                    dataset, "private", training={"max_steps": 400, "checkpoint_every_steps": 2}
                )
            )
            client.wait_step(run["id"], 3)
            attempts = [row["id"] for row in server.query("SELECT id FROM attempts")]
            client.cancel_ok(run["id"])
            # The cancelled worker's scratch (its data copy) goes with it, wherever it was.
            wait_until(lambda: not any((root / "scratch").iterdir()), timeout=60, what="scratch")
            system_temp = Path(tempfile.gettempdir())
            assert not [p for a in attempts for p in system_temp.glob(f"tunery-{a}-*")]
        finally:
            client.close()
        leaks = exposed(root)
        files = sum(len(names) for _, _, names in os.walk(root))
    figures.measure("data dir: what others could read, of a fresh server's", len(leaks))
    figures.attack("data dir permissions", refused=not leaks)
    assert files > 5  # datasets, the run's folder, checkpoints, logs, the database…
    assert leaks == []


def test_a_server_on_a_folder_others_can_read_warns(
    tmp_path: Path, demo_model_dir: Path, figures
) -> None:
    root = tmp_path / "shared" / "data"
    root.mkdir(parents=True)
    root.chmod(0o755)
    with running_server(root, server_env(root)) as server:
        log = server.log()
    warned = f"other users of this machine can reach {root} (mode 755)" in log
    figures.attack("data dir permissions", refused=warned)
    assert warned, log
    assert f"chmod 700 {root}" in log
