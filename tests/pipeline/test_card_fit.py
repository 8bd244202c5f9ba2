"""The worker's own memory check, on the model as loaded and the examples as prepared, and
the hint an out-of-memory error gets. Card sizes are given, since this machine has none."""

from __future__ import annotations

import pytest
import torch

from tunery.catalog.models import catalog
from tunery.pipeline.card_fit import (
    TrainingOutOfMemory,
    out_of_memory_fails,
    refuse_what_cannot_fit,
    setup_fit_problem,
)
from tunery.pipeline.data import prepare_data
from tunery.pipeline.load import Precision, load_model, load_tokenizer
from tunery.pipeline.lora import attach_lora
from tunery.pipeline.memory import GIB, ModelShape, TrainingPlan, estimate_peak_memory
from tunery.pipeline.train_setup import TrainSetup

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, None)


@pytest.fixture
def setup_for(demo_model_dir, demo_dataset, make_recipe, tmp_path):
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=512, seed=1)

    def make(**training: object) -> TrainSetup:
        recipe = make_recipe(training=training)
        model = load_model(demo_model_dir, FP32, CPU)
        adapted, _ = attach_lora(model, recipe.lora, gradient_checkpointing=False)
        return TrainSetup(
            adapted,
            data.examples,
            recipe.training,
            FP32,
            CPU,
            tokenizer.pad_token_id,
            tmp_path / "ckpt",
            "fp",
        )

    return make


def card_for(setup: TrainSetup, batch_size: int) -> float:
    """A card just big enough for ``batch_size`` of the setup's longest examples."""
    shape = ModelShape.from_config(setup.model.config.to_dict())
    plan = TrainingPlan(
        trainable_parameters=sum(p.numel() for p in setup.model.parameters() if p.requires_grad),
        gradient_checkpointing=setup.config.gradient_checkpointing,
        value_bytes=4,
    )
    longest = max(len(example.input_ids) for example in setup.examples)
    estimate = estimate_peak_memory(shape, plan, tokens_per_micro_batch=batch_size * longest)
    return estimate.total / GIB


def test_a_batch_the_card_cannot_hold_names_the_batch_size_that_fits(setup_for) -> None:
    setup = setup_for(batch_size=64, gradient_checkpointing=False)
    card = card_for(setup, batch_size=5)
    problem = setup_fit_problem(setup, card)
    assert problem is not None
    assert problem.problems[0].field == "training.batch_size"
    assert "use training.batch_size 5 or lower" in problem.hint
    assert setup_fit_problem(setup_for(batch_size=5, gradient_checkpointing=False), card) is None
    assert setup_fit_problem(setup, 80) is None


def test_off_a_gpu_nothing_is_refused_and_an_out_of_memory_error_keeps_its_levers(
    setup_for,
) -> None:
    setup = setup_for(batch_size=64, gradient_checkpointing=False)
    refuse_what_cannot_fit(setup)  # a CPU has no card to plan for
    with pytest.raises(TrainingOutOfMemory) as caught, out_of_memory_fails(setup):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not caught.value.transient
    assert caught.value.code == "out_of_memory"
    assert "Tried to allocate 2.00 GiB" in caught.value.message
    assert "training.batch_size (now 64)" in caught.value.hint
    assert "gradient_checkpointing" in caught.value.hint


@pytest.mark.parametrize("entry", catalog(), ids=lambda entry: entry.id)
def test_catalog_shapes_add_up_to_the_models_sizes(entry) -> None:
    # Attention biases (Qwen2) are the only parameters the planner leaves out.
    counted = ModelShape.from_config(entry.shape).parameters
    assert counted <= entry.parameters
    assert counted == pytest.approx(entry.parameters, rel=1e-4)


def test_the_demo_models_catalog_shape_is_the_model_as_built(demo_model_dir) -> None:
    model = load_model(demo_model_dir, FP32, CPU)
    demo = next(entry for entry in catalog() if entry.id == "tunery/demo-tiny")
    assert ModelShape.from_config(demo.shape).parameters == sum(
        p.numel() for p in model.parameters()
    )
    assert demo.parameters == sum(p.numel() for p in model.parameters())
