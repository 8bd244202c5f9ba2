"""Resumable checkpoints of the training loop: written atomically, found by their marker.

A checkpoint is written to ``.tmp-step-N/``, every file fsynced, renamed to ``step-N/``, and
the ``COMPLETE`` marker written last; resume takes the newest directory that has the marker
and whose recipe fingerprint matches. Optimizer state is loaded with
``torch.load(weights_only=True)``; adapter weights are safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.pipeline.train_setup import TrainerState

if TYPE_CHECKING:
    from tunery.pipeline.train_setup import TrainSetup

COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS_KEPT = 2


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    setup: TrainSetup, state: TrainerState, optimizer: Any, scheduler: Any, scaler: Any
) -> Path:
    """Write a checkpoint atomically: temp dir, fsync, rename, then the marker last."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = setup.checkpoint_dir
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    staging = root / f".tmp-step-{state.step:08d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    adapter = {
        key: value.detach().cpu().contiguous()
        for key, value in get_peft_model_state_dict(setup.model).items()
    }
    save_file(adapter, staging / "adapter.safetensors")
    training = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
    }
    if setup.preference is not None and setup.preference.reference is not None:
        # The starting point's log-probabilities: a resumed run cannot compute them again.
        training["reference"] = setup.preference.reference.as_tensors()
    torch.save(training, staging / "training_state.pt")
    (staging / "trainer_state.json").write_text(
        json.dumps(
            {
                "fingerprint": setup.fingerprint,
                "step": state.step,
                "trained_tokens": state.trained_tokens,
                "training_seconds": state.training_seconds,
                "history": state.history,
                "evaluations": state.evaluations,
                "early_stopping": state.early_stopping,
                "micro_batch_examples": state.micro_batch_examples,
            }
        )
    )
    for item in staging.iterdir():
        _fsync(item)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    marker = final / COMPLETE_MARKER
    marker.write_text("ok\n")
    _fsync(marker)
    _fsync(root)
    complete = complete_checkpoints(root)
    for old in complete[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoints whose marker was written, oldest first; half-written ones are ignored."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.glob("step-*") if (path / COMPLETE_MARKER).is_file())


def newest_checkpoint(setup: TrainSetup) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of this recipe and its ``trainer_state.json``."""
    for checkpoint in reversed(complete_checkpoints(setup.checkpoint_dir)):
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        if saved["fingerprint"] == setup.fingerprint:
            return checkpoint, saved
    return None


def saved_micro_batch_examples(setup: TrainSetup) -> int | None:
    """The micro-batch size (all devices) of the checkpoint ``load_newest_checkpoint`` would
    resume; None without one, or for one written before data-parallel training."""
    newest = newest_checkpoint(setup)
    if newest is None:
        return None
    return newest[1].get("micro_batch_examples") or None


def load_newest_checkpoint(
    setup: TrainSetup, optimizer: Any, scheduler: Any, scaler: Any
) -> TrainerState | None:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    newest = newest_checkpoint(setup)
    if newest is None:
        return None
    checkpoint, saved = newest
    adapter = load_file(checkpoint / "adapter.safetensors", device=str(setup.device))
    set_peft_model_state_dict(setup.model, adapter)
    training = torch.load(
        checkpoint / "training_state.pt", weights_only=True, map_location=setup.device
    )
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    scaler.load_state_dict(training["scaler"])
    torch.random.set_rng_state(training["rng"]["torch"].cpu())
    if "cuda" in training["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in training["rng"]["cuda"]])
    if setup.preference is not None:
        from tunery.pipeline.preference import ReferenceLogprobs

        setup.preference.reference = ReferenceLogprobs.from_tensors(training["reference"])
    return TrainerState(
        step=saved["step"],
        trained_tokens=saved["trained_tokens"],
        training_seconds=saved["training_seconds"],
        history=saved["history"],
        # Checkpoints written before evaluations existed have neither.
        evaluations=saved.get("evaluations", []),
        early_stopping=saved.get("early_stopping"),
        micro_batch_examples=saved.get("micro_batch_examples", 0),
    )
