"""The pipeline on SmolLM2-135M-Instruct in this process: PEFT reads tunery's adapter and
gives tunery's logits, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from tunery.catalog.smollm2 import SMOLLM2_MODEL_ID
from tunery.errors import RunCancelled
from tunery.pipeline.checkpoints import complete_checkpoints
from tunery.pipeline.data import prepare_data
from tunery.pipeline.load import Precision, load_model, load_tokenizer
from tunery.pipeline.lora import attach_lora
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter
from tunery.pipeline.save import save_adapter, write_lora_bundle
from tunery.pipeline.train import train
from tunery.pipeline.train_setup import TrainSetup

pytestmark = pytest.mark.real

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, None)


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need one thread: sums then add up in a fixed order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_peft_loads_the_bundle_and_gives_tunerys_logits(
    smollm2_model_dir, demo_dataset, real_recipe, tmp_path
):
    from peft import PeftModel

    recipe = real_recipe(training={"max_steps": 2}, lora={"rank": 8, "alpha": 16})
    tokenizer, chat_format, _ = load_tokenizer(smollm2_model_dir)
    assert chat_format.end_of_turn == "<|im_end|>"
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=256, seed=1)
    model, _ = attach_lora(
        load_model(smollm2_model_dir, FP32, CPU), recipe.lora, gradient_checkpointing=False
    )
    reporter = RecordingReporter()
    train(
        TrainSetup(
            model,
            data.examples,
            recipe.training,
            FP32,
            CPU,
            tokenizer.pad_token_id,
            tmp_path / "checkpoints",
            "real",
        ),
        reporter,
    )
    assert len(reporter.steps) == 2
    adapter_dir = save_adapter(
        model,
        tokenizer,
        chat_format,
        base_model=SMOLLM2_MODEL_ID,
        adapter_dir=tmp_path / "adapter",
        model_card="card",
    )
    bundle = write_lora_bundle(adapter_dir, tmp_path / "real-lora.zip")
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "unzipped")
        config = json.loads(archive.read("adapter_config.json"))
    assert config["base_model_name_or_path"] == SMOLLM2_MODEL_ID

    # A rendered conversation with SmolLM2's default system prompt, as inference sees it.
    sample = torch.tensor([data.examples[0].input_ids])
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(sample[0])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=sample).logits
        loaded = PeftModel.from_pretrained(
            load_model(smollm2_model_dir, FP32, CPU), tmp_path / "unzipped"
        )
        actual = loaded(input_ids=sample).logits
        untuned = load_model(smollm2_model_dir, FP32, CPU)(input_ids=sample).logits
    # tunery adds LoRA's update inside the base product (addmm), PEFT after it: equal up to
    # float32 rounding through 30 layers.
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert (untuned - expected).abs().max() > 1e-2  # the adapter changed something


def test_resume_continues_exactly_as_if_uninterrupted(
    real_data_dir, real_recipe, tmp_path, one_thread
):
    recipe = real_recipe(lora={"rank": 8, "alpha": 16, "dropout": 0.1})
    straight = RecordingReporter()
    run_recipe(recipe, tmp_path / "straight", straight)

    interrupted = RecordingReporter(stop_after_step=3)
    with pytest.raises(RunCancelled):
        run_recipe(recipe, tmp_path / "resumed", interrupted)
    checkpoints = complete_checkpoints(tmp_path / "resumed" / "checkpoints")
    assert [path.name for path in checkpoints] == ["step-00000002"]

    resumed = RecordingReporter()
    run_recipe(recipe, tmp_path / "resumed", resumed)
    assert "resumed from the checkpoint at step 2" in resumed.logs
    assert [step.step for step in resumed.steps] == [3, 4]
    assert [step.loss for step in resumed.steps] == [step.loss for step in straight.steps[2:]]
    first = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    second = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
