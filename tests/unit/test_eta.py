"""EtaEstimator and StepMetrics: what the Run panel header shows."""

from __future__ import annotations

import pytest

from tunery.pipeline.reporting import EtaEstimator, StepMetrics


def fed(durations: list[float], **kwargs: int) -> EtaEstimator:
    estimator = EtaEstimator(**kwargs)
    for seconds in durations:
        estimator.add(seconds)
    return estimator


def test_no_estimate_before_any_step() -> None:
    assert EtaEstimator().remaining(100) is None


def test_no_estimate_until_enough_measured_steps() -> None:
    estimator = EtaEstimator()  # skip 1, min_steps 5
    estimator.add(30.0)  # warm-up step, skipped
    for _ in range(4):
        estimator.add(1.0)
        assert estimator.remaining(10) is None
    estimator.add(1.0)
    assert estimator.remaining(10) == pytest.approx(10.0)


def test_first_step_is_not_measured() -> None:
    estimator = fed([100.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert estimator.remaining(3) == pytest.approx(6.0)


def test_estimate_is_median_times_steps_left() -> None:
    estimator = fed([9.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert estimator.remaining(10) == pytest.approx(30.0)
    assert estimator.remaining(0) == 0.0
    assert estimator.remaining(-5) == 0.0


def test_single_outlier_is_ignored() -> None:
    estimator = fed([5.0, 0.5, 0.5, 0.5, 60.0, 0.5, 0.5])
    assert estimator.remaining(100) == pytest.approx(50.0)


def test_window_keeps_only_recent_steps() -> None:
    # 20 slow steps then 11 fast ones: within a 20-step window the fast ones are the
    # majority, so the median is fast; an unbounded history would still say slow.
    estimator = fed([1.0] + [10.0] * 20 + [1.0] * 11)
    assert estimator.remaining(10) == pytest.approx(10.0)


def test_custom_skip_min_steps_and_window() -> None:
    estimator = EtaEstimator(skip=3, min_steps=2, window=3)
    for seconds in (50.0, 50.0, 50.0, 4.0):
        estimator.add(seconds)
    assert estimator.remaining(1) is None
    estimator.add(4.0)
    assert estimator.remaining(1) == pytest.approx(4.0)
    for seconds in (2.0, 2.0):
        estimator.add(seconds)
    assert estimator.remaining(1) == pytest.approx(2.0)


def metrics(*, step: int = 5, total_steps: int = 20, epoch: float = 1.0, epochs: int = 3):
    return StepMetrics(
        step=step,
        total_steps=total_steps,
        epoch=epoch,
        epochs=epochs,
        loss=1.5,
        learning_rate=2e-4,
        grad_norm=0.7,
        tokens_per_second=1000.0,
        trained_tokens=4096,
        training_seconds=12.0,
        eta_seconds=None,
    )


@pytest.mark.parametrize(
    ("step", "total", "expected"),
    [(0, 20, 0.0), (5, 20, 25.0), (20, 20, 100.0), (1, 3, 100 / 3), (3, 0, 0.0)],
)
def test_progress(step: int, total: int, expected: float) -> None:
    assert metrics(step=step, total_steps=total).progress == pytest.approx(expected)


def test_as_dict_rounds_progress() -> None:
    data = metrics(step=1, total_steps=3).as_dict()
    assert data["progress"] == 33.33
    assert data["step"] == 1
    assert data["eta_seconds"] is None


@pytest.mark.parametrize(
    ("epoch", "epochs", "expected"),
    [
        (0.0, 3, 1),
        (0.1, 3, 1),
        (1.0, 3, 1),
        (1.01, 3, 2),
        (2.5, 3, 3),
        (3.0, 3, 3),
        (3.4, 3, 3),
        (0.0, 1, 1),
    ],
)
def test_current_epoch(epoch: float, epochs: int, expected: int) -> None:
    assert metrics(epoch=epoch, epochs=epochs).current_epoch == expected
