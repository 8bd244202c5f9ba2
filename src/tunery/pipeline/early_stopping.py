"""Early stopping: the best evaluation so far, and when waiting for a better one is over.

Torch-free state that a checkpoint stores as JSON (``as_dict`` / ``from_dict``), so a
resumed run counts the evaluations without improvement exactly as the run before it did.
The adapter of the best evaluation is kept by the training loop (``best_adapter_dir``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BEST_ADAPTER_DIR = "best"
"""Under the checkpoint directory: the adapter weights of the best evaluation so far."""


def best_adapter_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / BEST_ADAPTER_DIR


@dataclass
class EarlyStopping:
    """``patience`` evaluations in a row that are not better by ``min_delta`` stop training.

    ``patience`` 0 never stops, but still tracks the best evaluation.
    """

    patience: int
    min_delta: float = 0.0
    best_loss: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0
    stopped_at_step: int | None = None

    def observe(self, step: int, loss: float) -> bool:
        """Record an evaluation after ``step``; True when it is the best so far."""
        if self.best_loss is None or loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step = loss, step
            self.evaluations_without_improvement = 0
            return True
        self.evaluations_without_improvement += 1
        if self.should_stop:
            self.stopped_at_step = step
        return False

    @property
    def should_stop(self) -> bool:
        return 0 < self.patience <= self.evaluations_without_improvement

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(
        cls, saved: dict[str, Any] | None, *, patience: int, min_delta: float
    ) -> EarlyStopping:
        """The saved state with the recipe's settings (a checkpoint of another recipe is
        never resumed, so they agree)."""
        state = cls(patience=patience, min_delta=min_delta)
        if saved:
            state.best_loss = saved.get("best_loss")
            state.best_step = saved.get("best_step")
            state.evaluations_without_improvement = saved.get("evaluations_without_improvement", 0)
            state.stopped_at_step = saved.get("stopped_at_step")
        return state
