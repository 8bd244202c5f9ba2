"""Weights & Biases for a run whose recipe asks for it (``integrations: [{type: wandb}]``).

``with_wandb`` wraps the run's reporter: everything still goes where it went, and each
step's numbers (``train/loss``, ``train/mean_token_accuracy``, learning rate, gradient norm,
tokens per second, epoch) and each evaluation (``valid/loss``,
``valid/mean_token_accuracy``) are logged to W&B at their step; a DPO run adds its rewards
(``train/rewards/margins``, ``valid/rewards/accuracies``, ...). The W&B run's id is the
tunery run's, resumed by every attempt, so a retried or paused run is one W&B run. The
``wandb`` package (the ``wandb`` extra) is imported only here, only for such runs; its key
and mode come from the environment (a worker sets them from its spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunery.errors import TuneryError
from tunery.pipeline.config import RunRecipe
from tunery.pipeline.reporting import EvalMetrics, ForwardingReporter, Reporter, StepMetrics

DEFAULT_TAGS = ("tunery/finetune",)


class WandbUnavailable(TuneryError):
    """The run asks for W&B and this machine cannot log to it."""

    code = "wandb_unavailable"


class WandbReporter(ForwardingReporter):
    """A reporter that also logs to a W&B run; ``close`` ends that run."""

    def __init__(self, inner: Reporter, run: Any) -> None:
        super().__init__(inner)
        self._run = run

    def metrics(self, metrics: StepMetrics) -> None:
        self._inner.metrics(metrics)
        numbers = {
            "train/loss": metrics.loss,
            "train/mean_token_accuracy": metrics.accuracy,
            "train/learning_rate": metrics.learning_rate,
            "train/grad_norm": metrics.grad_norm,
            "train/tokens_per_second": metrics.tokens_per_second,
            "train/trained_tokens": metrics.trained_tokens,
            "train/epoch": metrics.epoch,
            **_rewards(
                "train",
                metrics.rewards_chosen,
                metrics.rewards_rejected,
                metrics.reward_margin,
                metrics.reward_accuracy,
            ),
        }
        self._run.log(_present(numbers), step=metrics.step)

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        self._inner.eval_metrics(metrics)
        numbers = {
            "valid/loss": metrics.eval_loss,
            "valid/mean_token_accuracy": metrics.eval_accuracy,
            **_rewards(
                "valid",
                metrics.eval_rewards_chosen,
                metrics.eval_rewards_rejected,
                metrics.eval_reward_margin,
                metrics.eval_reward_accuracy,
            ),
        }
        self._run.log(_present(numbers), step=metrics.step)

    def close(self) -> None:
        self._run.finish()


def _rewards(
    section: str,
    chosen: float | None,
    rejected: float | None,
    margin: float | None,
    accuracy: float | None,
) -> dict[str, float | None]:
    """A DPO run's rewards under the keys TRL's DPO trainer logs (``train/rewards/margins``
    ...), so W&B charts compare with runs trained there; all None for an SFT run."""
    return {
        f"{section}/rewards/chosen": chosen,
        f"{section}/rewards/rejected": rejected,
        f"{section}/rewards/margins": margin,
        f"{section}/rewards/accuracies": accuracy,
    }


def _present(numbers: dict[str, float | int | None]) -> dict[str, float | int]:
    return {key: value for key, value in numbers.items() if value is not None}


def with_wandb(
    recipe: RunRecipe, reporter: Reporter, *, run_id: str, folder: Path
) -> WandbReporter | None:
    """``reporter`` logging to W&B too, when the recipe asks for it (else None); W&B keeps
    its files under ``folder``. Raises WandbUnavailable when ``wandb`` is not installed."""
    wanted = next((item.wandb for item in recipe.integrations if item.type == "wandb"), None)
    if wanted is None:
        return None
    try:
        import wandb
    except ImportError:
        raise WandbUnavailable(
            "the run logs to W&B but the wandb package is not installed on this node",
            hint="pip install 'tunery[wandb]' on the node, or drop the run's integrations",
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=wanted.project,
        entity=wanted.entity,
        name=wanted.name or run_id,
        id=run_id,
        resume="allow",
        tags=[*DEFAULT_TAGS, f"tunery/{recipe.base_model}"[:64], *wanted.tags],
        config=recipe.model_dump(mode="json", exclude={"integrations"}),
        dir=str(folder),
    )
    reporter.log(f"logging to W&B: project {wanted.project}, run {run_id}")
    return WandbReporter(reporter, run)
