"""Files that outlive what they belong to: a deleted Hub entry's GGUF unpacked for chat, and
what a server killed mid-write leaves in its data dir.

In process, on the control plane and its real storage: the chat route's own unpacking
(``serving.served_gguf``) puts a GGUF under ``DATA_DIR/serving/ENTRY``; deleting the entry
(or its run) must take it away. A killed server's temporary names are swept when the next
server starts, and nothing a record names is touched.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

from control_harness import payload
from plane_kit import grant, upload

from tunery.db import HubEntry, Run, new_id, now
from tunery.lifecycle import RunStatus
from tunery.openai_api import serving
from tunery.runs import hub, leftovers, settle
from tunery.runs.intake import submit_run
from tunery.runs.plane import ControlPlane

MakePlane = Callable[..., ControlPlane]
AREA = "files outliving their record (served GGUFs, a killed server's temporary files)"


def completed_with_gguf(plane: ControlPlane, tmp: Path) -> tuple[str, str]:
    """A completed run of account ``a`` whose Hub entry holds a GGUF bundle; (run, entry)."""
    grant(plane, "a", 100)
    run = submit_run(
        plane, account_id="a", payload=payload(upload(plane, "a")), idempotency_key=None
    )
    bundle = tmp / f"{run.id}-gguf.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("model.gguf", b"GGUF" + b"\0" * 1024)
        archive.writestr("Modelfile", 'FROM ./model.gguf\nPARAMETER stop "<|end|>"\n')
    entry_id = new_id("hub")
    stored = plane.storage.put(entry_id, "gguf", bundle)
    with plane.sessions.begin() as session:
        row = session.get(Run, run.id)
        row.status, row.finished_at, row.hub_entry_id = RunStatus.COMPLETED.value, now(), entry_id
        session.add(
            HubEntry(
                id=entry_id,
                account_id="a",
                run_id=run.id,
                name=run.name,
                base_model="tunery/demo-tiny",
                artifacts={"gguf": {"filename": stored.filename, "size": 1, "sha256": ""}},
                created_at=now(),
            )
        )
    return run.id, entry_id


def test_deleting_a_hub_entry_removes_its_served_gguf(
    make_plane: MakePlane, tmp_path: Path, figures
) -> None:
    plane = make_plane()
    run_id, entry_id = completed_with_gguf(plane, tmp_path)
    served = serving.served_gguf(plane, "a", run_id)
    assert served.path.is_file() and served.stops == ["<|end|>"]
    hub.delete_entry(plane, account_id="a", entry_id=entry_id)
    gone = not (plane.serving_dir / entry_id).exists()
    figures.attack(AREA, refused=gone)
    assert gone


def test_deleting_a_run_removes_its_served_gguf(
    make_plane: MakePlane, tmp_path: Path, figures
) -> None:
    plane = make_plane()
    run_id, entry_id = completed_with_gguf(plane, tmp_path)
    serving.served_gguf(plane, "a", run_id)
    settle.delete_run(plane, account_id="a", run_id=run_id)
    gone = not (plane.serving_dir / entry_id).exists()
    figures.attack(AREA, refused=gone)
    assert gone
    assert hub.find_entry(plane, "a", entry_id)  # the Hub entry itself stays


def test_a_killed_servers_temporary_files_are_swept_at_the_next_start(
    make_plane: MakePlane, tmp_path: Path, figures
) -> None:
    plane = make_plane()
    run_id, entry_id = completed_with_gguf(plane, tmp_path)
    serving.served_gguf(plane, "a", run_id)
    dataset = next(plane.datasets_dir.iterdir())
    kept = [dataset, plane.serving_dir / entry_id, plane.storage.path(entry_id, "gguf")]
    # What each write leaves when the server is killed before its rename or its row.
    left = [
        plane.datasets_dir / f"{leftovers.UPLOAD_PREFIX}k1lled.jsonl",  # upload, unrenamed
        plane.datasets_dir / "ds_0123456789abcdef.jsonl",  # renamed, row never committed
        plane.serving_dir / f".{entry_id}-x7q2",  # unpack, unrenamed
        plane.serving_dir / "hub_0123456789abcdef",  # served copy of an entry long gone
        plane.storage.path(entry_id, "gguf").with_suffix(".partial"),  # Hub copy, unrenamed
        plane.storage.root / "hub_fedcba9876543210",  # stored, row never committed
    ]
    for path in left:
        if path.suffix:
            path.write_bytes(b"partial")
        else:
            path.mkdir()
            (path / "model.gguf").write_bytes(b"partial")
    removed = leftovers.sweep_at_start(plane)
    swept = sorted(removed) == sorted(left) and not any(path.exists() for path in left)
    figures.attack(AREA, refused=swept and all(path.exists() for path in kept))
    assert sorted(removed) == sorted(left)
    assert all(path.exists() for path in kept)
