"""What the terminal shows of evaluations, early stops, estimates and side-by-side samples."""

from __future__ import annotations

from tunery.cli.client import SseEvent
from tunery.cli.render import StepProgress, evaluation_lines, print_estimate, print_samples
from tunery.cli.runs import RunWatcher


def test_the_watcher_logs_each_evaluation(capsys) -> None:
    evaluation = {
        "step": 20,
        "eval_loss": 1.23456,
        "eval_accuracy": 0.5,
        "best_eval_loss": 1.2,
        "best_step": 10,
    }
    with StepProgress() as progress:
        RunWatcher(progress).handle(SseEvent("1", "evaluation", evaluation))
    shown = capsys.readouterr().err
    assert "step 20: eval loss 1.2346 · token accuracy 50.0% · best 1.2000 at step 10" in shown


def test_show_tells_the_early_stop_and_the_estimate_beside_what_it_took() -> None:
    run = {
        "status": "completed",
        "metrics": {"training_seconds": 75.0},
        "evaluation": {
            "step": 40,
            "eval_loss": 1.4,
            "best_eval_loss": 1.1,
            "best_step": 20,
            "stopped_early": True,
            "stopped_at_step": 40,
        },
        "estimate": {"seconds": 90.0},
        "estimate_check": {
            "estimated_seconds": 90.0,
            "actual_seconds": 99.0,
            "seconds_ratio": 1.1,
            "estimated_credits": 1.5,
            "actual_credits": 1.65,
            "credits_ratio": 1.1,
            "estimated_startup_seconds": 20.0,
            "actual_startup_seconds": 30.0,
            "startup_ratio": 1.5,
            "source": "calibrated",
            "phases": {},
        },
    }
    lines = dict(evaluation_lines(run))
    assert lines["eval"].startswith("step 40: eval loss 1.4000")
    assert "early at step 40" in lines["stopped"] and "step 20 (the best)" in lines["stopped"]
    assert lines["billed"] == "1:30 estimated, 1:39 actual (1.10×)"
    assert lines["credits"] == "1.50 estimated, 1.65 actual (1.10×)"
    assert lines["startup"] == "0:20 estimated, 0:30 actual (1.50×)"
    assert lines["estimate"] == "was from the tier's benchmark of the model's shape"
    unfinished = dict(evaluation_lines({**run, "status": "training", "estimate_check": None}))
    assert unfinished["estimate"] == "1:30 billed, estimated"


def test_samples_show_tuned_base_and_reference_and_flag_empty_replies(capsys) -> None:
    print_samples(
        [
            {
                "prompt": "2+2?",
                "response": "4",
                "base_response": "",
                "expected": "4",
                "stopped": True,
            },
            {"prompt": "hi", "response": "", "stopped": True},
        ]
    )
    shown = capsys.readouterr().out
    assert "  tuned    → 4\n  base     → [empty reply]\n  expected → 4" in shown
    assert "sample 2: hi\n  tuned    → [empty reply]" in shown


def test_the_estimate_shows_the_planned_memory_where_the_tier_has_a_card(capsys) -> None:
    estimate = {
        "examples": 377,
        "rows": 400,
        "validation_examples": 20,
        "tokens": 19000,
        "tokens_per_epoch": 19000,
        "total_steps": 95,
        "epochs": 1,
        "seconds": 120.0,
        "tier": "t4",
        "throughput_source": "prior",
        "credits": None,
        "peak_memory_gib": 6.2,
        "gpu_memory_gib": 15.0,
        "notes": [],
    }
    print_estimate(estimate)
    assert "memory      ~6.2 GiB peak of the card's 15 GiB" in capsys.readouterr().out
    print_estimate({**estimate, "peak_memory_gib": None, "gpu_memory_gib": None})
    assert "memory" not in capsys.readouterr().out
