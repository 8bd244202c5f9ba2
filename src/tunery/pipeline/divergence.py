"""The divergence guard: a run whose loss blows up fails as ``diverged`` instead of ending green.

Two signs, checked on every step's loss before its optimizer step (so no NaN ever reaches the
weights or a checkpoint):

- the loss is NaN or infinite;
- the smoothed loss stays far above where the run started (twice the first step's loss, which
  the untouched base model scored, and at least one nat higher) for a sustained stretch of
  steps (``sustained_steps``): one bad batch or a short spike that recovers never stops a
  run.

While the loss is healthy the guard keeps, in host memory, the adapter weights of the step
with the lowest smoothed loss so far (at most about a hundred copies over a run). When the
run diverges, the recipe restores them and delivers that adapter, so the failed run still
leaves the best model it reached. Torch is imported only to take those copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunery.errors import FieldProblem, TuneryError

if TYPE_CHECKING:
    from tunery.pipeline.config import RunRecipe
    from tunery.pipeline.reporting import Reporter

RISE_FACTOR = 2.0
RISE_NATS = 1.0
"""The smoothed loss is "far above" the start past ``max(RISE_FACTOR × start, start +
RISE_NATS)``: a doubling, and never less than one nat per token."""
SMOOTHING = 0.8
"""Weight of the past in the exponential moving average of the loss."""
MIN_SUSTAINED_STEPS = 10
MAX_SUSTAINED_STEPS = 100
KEPT_COPIES = 100
"""At most about this many adapter copies over a run: a new best is copied only this far apart."""
USUAL_LORA_LEARNING_RATE = (1e-5, 1e-2)
"""Learning rates at which LoRA fine-tunes usually train; above the upper end they diverge."""
LARGE_ADAPTER_SHARE = 0.25
"""An adapter with more trainable parameters than this share of the model is no longer a
low-rank update: a rank that large trains like full fine-tuning, with LoRA's learning rate."""
HIGH_ALPHA_SCALE = 8.0
"""alpha / rank above this scales every update up that much (the usual is 1 to 2)."""
GENERIC_HINT = (
    "lower training.learning_rate (LoRA usually trains at 1e-4 to 3e-4) or lora.alpha, or clip "
    "harder with a lower training.max_grad_norm"
)


class TrainingDiverged(TuneryError):
    """The loss became non-finite or rose far above where it started. A user error: the same
    recipe diverges again.

    ``kept_step`` and ``kept_weights`` are the step whose adapter the guard kept and the
    adapter's weights (host tensors), or None when no healthy step was kept; ``history`` the
    rows of the steps trained before the divergence.
    """

    code = "diverged"

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        step: int,
        history: list[dict[str, Any]] | None = None,
        kept_step: int | None = None,
        kept_loss: float | None = None,
        kept_weights: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.step = step
        self.history = history or []
        self.kept_step = kept_step
        self.kept_loss = kept_loss
        self.kept_weights = kept_weights


def sustained_steps(total_steps: int) -> int:
    """How many steps in a row the smoothed loss must stay far above the start: 2% of the
    run, between 10 and 100 steps."""
    return max(MIN_SUSTAINED_STEPS, min(MAX_SUSTAINED_STEPS, total_steps // 50))


@dataclass
class DivergenceGuard:
    """Watches the loss of each step; ``observe`` raises TrainingDiverged when it diverges."""

    total_steps: int
    history: list[dict[str, Any]]
    """The training loop's step rows (the same list, which the loop appends to)."""
    start: float | None = None
    """The first step's loss."""
    smoothed: float | None = None
    above_since: int | None = None
    best_loss: float | None = None
    kept_step: int | None = None
    kept_loss: float | None = None
    kept_weights: dict[str, Any] | None = None

    @classmethod
    def watching(cls, total_steps: int, history: list[dict[str, Any]]) -> DivergenceGuard:
        """A guard for a run of ``total_steps`` whose loop appends its steps to ``history``;
        caught up on a resumed run's rows (whose adapter copies are gone: only steps after
        the resume can be kept)."""
        guard = cls(total_steps, history)
        for row in history:
            if row.get("loss") is not None:
                guard._smooth(row["step"], row["loss"])
        return guard

    @property
    def limit(self) -> float | None:
        """The smoothed loss above which the run counts as far above its start."""
        start = self.start
        return None if start is None else max(RISE_FACTOR * start, start + RISE_NATS)

    def observe(self, step: int, loss: float, model: Any, *, done_steps: int) -> None:
        """Check the loss of ``step`` (1-based), measured on the weights after ``done_steps``
        optimizer steps; keep a copy of those weights when they are the best so far.

        Raises TrainingDiverged when the loss is non-finite or has stayed far above its
        start for ``sustained_steps``.
        """
        if not math.isfinite(loss):
            self._diverged(f"the loss became {loss} at step {step}", step)
        self._smooth(step, loss)
        limit = self.limit
        assert self.smoothed is not None
        if limit is not None and self.smoothed > limit:
            if self.above_since is None:
                self.above_since = step
            if step - self.above_since + 1 >= sustained_steps(self.total_steps):
                self._diverged(
                    f"the loss rose from {self.start:.4f} to {self.smoothed:.4f} (smoothed) "
                    f"and stayed above {limit:.4f} from step {self.above_since} to step {step}",
                    step,
                )
            return
        self.above_since = None
        # The best among trained adapters: the untouched one (no step done) is the base model,
        # and a run whose loss only ever rose still delivers the first step's.
        if done_steps > 0 and (self.best_loss is None or self.smoothed < self.best_loss):
            self.best_loss = self.smoothed
            gap = max(1, self.total_steps // KEPT_COPIES)
            if self.kept_step is None or done_steps - self.kept_step >= gap:
                self._keep(model, done_steps, self.smoothed)

    def _smooth(self, step: int, loss: float) -> None:
        if self.start is None:
            self.start = loss
        # Starting from the first loss, not zero, so the first steps are not pulled down.
        previous = self.smoothed if self.smoothed is not None else loss
        self.smoothed = previous * SMOOTHING + (1 - SMOOTHING) * loss

    def _keep(self, model: Any, step: int, loss: float) -> None:
        from peft import get_peft_model_state_dict

        self.kept_weights = {
            name: tensor.detach().to("cpu", copy=True)
            for name, tensor in get_peft_model_state_dict(model).items()
        }
        self.kept_step, self.kept_loss = step, loss

    def _diverged(self, what: str, step: int) -> None:
        raise TrainingDiverged(
            f"training diverged: {what}",
            hint=GENERIC_HINT,
            step=step,
            history=list(self.history),
            kept_step=self.kept_step,
            kept_loss=self.kept_loss,
            kept_weights=self.kept_weights,
        )


def restore_kept_adapter(model: Any, diverged: TrainingDiverged, reporter: Reporter) -> None:
    """Load the adapter the guard kept before the divergence back into ``model``."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, diverged.kept_weights)
    reporter.log(
        f"{diverged.message}; kept the adapter of step {diverged.kept_step} (smoothed loss "
        f"{diverged.kept_loss:.4f}), the best before the loss rose"
    )


def unusual_settings(
    recipe: RunRecipe, *, trainable_share: float | None, training_examples: int | None = None
) -> list[FieldProblem]:
    """The recipe's settings far outside what works for LoRA, each with its field and its
    usual range: what a submission warns about and a divergence names as its likely cause.

    ``trainable_share``: the adapter's share of the model's parameters, if known;
    ``training_examples``: how many examples the run trains on, if known.
    """
    found = []
    low, high = USUAL_LORA_LEARNING_RATE
    rate = recipe.training.learning_rate
    if rate > high:
        found.append(
            FieldProblem(
                "training.learning_rate",
                f"{rate:g} is above {high:g} (LoRA usually trains at {low:g} to {high:g}, "
                "most often 1e-4 to 3e-4)",
            )
        )
    if trainable_share is not None and trainable_share > LARGE_ADAPTER_SHARE:
        found.append(
            FieldProblem(
                "lora.rank",
                f"{recipe.lora.rank} makes the adapter {trainable_share:.0%} of the model (a "
                "LoRA adapter is usually under 1%; ranks 8 to 64 are usual)",
            )
        )
    scale = recipe.lora.alpha / recipe.lora.rank
    if scale > HIGH_ALPHA_SCALE:
        found.append(
            FieldProblem(
                "lora.alpha", f"{recipe.lora.alpha:g} is {scale:g}× the rank (usually 1× to 2×)"
            )
        )
    step = recipe.training.batch_size * recipe.training.gradient_accumulation_steps
    if training_examples is not None and step > training_examples:
        found.append(
            FieldProblem(
                "training.batch_size",
                f"{step} examples per optimizer step is more than the {training_examples} "
                "training examples: every step sees the whole dataset (a batch is usually a "
                "small share of it, 4 to 64 examples)",
            )
        )
    return found


def divergence_hint(recipe: RunRecipe, *, trainable_share: float | None) -> str:
    """What to change after a divergence: the unusual settings when there are any."""
    causes = unusual_settings(recipe, trainable_share=trainable_share)
    return "likely cause: " + "; ".join(map(str, causes)) if causes else GENERIC_HINT
