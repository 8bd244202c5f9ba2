"""The pipeline end to end on the demo model: budgets, checkpoints, resume, cancel, bundle."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from tunery.errors import ConfigError, RunCancelled, RunPaused
from tunery.pipeline.budget import plan_budget
from tunery.pipeline.chat import Example
from tunery.pipeline.checkpoints import complete_checkpoints
from tunery.pipeline.data import prepare_data
from tunery.pipeline.divergence import TrainingDiverged
from tunery.pipeline.load import Precision, load_model, load_tokenizer
from tunery.pipeline.lora import attach_lora
from tunery.pipeline.packing import batch_loss_sum, pack
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter
from tunery.pipeline.save import LORA_BUNDLE_FILES, save_adapter, write_lora_bundle
from tunery.pipeline.train import train
from tunery.pipeline.train_setup import TrainSetup

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, None)


def test_loss_decreases_and_outputs_are_written(data_dir, make_recipe, tmp_path):
    recipe = make_recipe(training={"max_steps": 30, "checkpoint_every_steps": 10})
    reporter = RecordingReporter()
    result = run_recipe(recipe, tmp_path / "out", reporter)

    losses = [step.loss for step in reporter.steps]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert reporter.phases == [
        "loading_model",
        "preparing_data",
        "attaching_lora",
        "training",
        "saving",
        "sampling",
    ]
    last = reporter.steps[-1]
    assert (last.step, last.total_steps, last.progress) == (30, 30, 100.0)
    assert last.eta_seconds == 0.0
    assert reporter.steps[0].eta_seconds is None  # no estimate before measured steps
    assert all(step.tokens_per_second > 0 for step in reporter.steps)

    out = tmp_path / "out"
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "completed"
    assert summary["metrics"]["step"] == 30
    assert summary["chat_template"] == {"source": "model", "end_of_turn": "<|im_end|>"}
    assert len(summary["samples"]) == 3
    assert all(sample["response"] is not None for sample in summary["samples"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 30
    assert result.lora_bundle == out / "test-run-lora.zip"
    assert complete_checkpoints(out / "checkpoints") == []  # removed once saved


def test_lora_bundle_holds_exactly_the_contract_files(data_dir, make_recipe, tmp_path):
    result = run_recipe(make_recipe(), tmp_path / "out", RecordingReporter())
    with zipfile.ZipFile(result.lora_bundle) as bundle:
        assert sorted(bundle.namelist()) == sorted(LORA_BUNDLE_FILES)
        config = json.loads(bundle.read("adapter_config.json"))
        card = bundle.read("README.md").decode()
        template = bundle.read("chat_template.jinja").decode()
    assert config["base_model_name_or_path"] == "tunery/demo-tiny"
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert "<|im_start|>" in template
    for expected in (
        "tunery/demo-tiny",
        "demo-dataset.jsonl",
        "PeftModel.from_pretrained",
        "ollama create",
        "Final training loss",
        '"learning_rate": 0.002',
    ):
        assert expected in card


def test_bundle_loads_with_peft_and_gives_the_same_logits(
    data_dir, demo_model_dir, demo_dataset, make_recipe, tmp_path
):
    from peft import PeftModel

    recipe = make_recipe()
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=512, seed=1)
    model, _ = attach_lora(
        load_model(demo_model_dir, FP32, CPU), recipe.lora, gradient_checkpointing=False
    )
    train(
        TrainSetup(
            model,
            data.examples,
            recipe.training,
            FP32,
            CPU,
            tokenizer.pad_token_id,
            tmp_path / "ckpt",
            "fp",
        ),
        RecordingReporter(),
    )
    adapter_dir = save_adapter(
        model,
        tokenizer,
        chat_format,
        base_model="tunery/demo-tiny",
        adapter_dir=tmp_path / "adapter",
        model_card="card",
    )
    bundle = write_lora_bundle(adapter_dir, tmp_path / "x-lora.zip")
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(unzipped)

    sample = torch.tensor([data.examples[0].input_ids])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=sample).logits
        base = load_model(demo_model_dir, FP32, CPU)
        loaded = PeftModel.from_pretrained(base, unzipped)
        actual = loaded(input_ids=sample).logits
        untuned = load_model(demo_model_dir, FP32, CPU)(input_ids=sample).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(untuned, expected, atol=1e-3)  # the adapter changed something


def test_packed_rows_do_not_leak_between_examples(demo_model_dir, demo_dataset):
    """The loss of a packed micro-batch equals the sum of each example's loss alone."""
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=512, seed=1)
    model = load_model(demo_model_dir, FP32, CPU).eval()
    batch = data.examples[:6]
    packed = pack(batch, tokenizer.pad_token_id, CPU)
    assert packed.input_ids.shape[0] < len(batch)  # examples share rows
    assert packed.real_tokens == sum(len(example.input_ids) for example in batch)
    with torch.no_grad():
        together = batch_loss_sum(model, packed)
        alone = sum(
            batch_loss_sum(model, pack([example], tokenizer.pad_token_id, CPU)) for example in batch
        )
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_pack_fills_rows_first_fit_and_pads_only_the_tail():
    examples = [Example(list(range(n)), [-100] * n) for n in (1500, 1000, 600, 400)]
    packed = pack(examples, pad_id=0, device=CPU)
    # Rows as long as the longest example: [1500], [1000 + 400 + 100 pad], [600 + 900 pad].
    assert packed.input_ids.shape == (3, 1500)
    positions = packed.position_ids[1].tolist()
    assert positions[:3] == [0, 1, 2] and positions[1000] == 0 and positions[1400] == 0
    assert packed.targets[1, 1400:].eq(-100).all()
    assert packed.real_tokens == 3500


@pytest.mark.slow
def test_step_and_epoch_budgets_stop_where_they_should(data_dir, make_recipe, tmp_path):
    steps = RecordingReporter()
    run_recipe(make_recipe(training={"max_steps": 7, "epochs": 5}), tmp_path / "a", steps)
    assert [s.step for s in steps.steps] == list(range(1, 8))
    assert steps.steps[-1].total_steps == 7

    epochs = RecordingReporter()
    run_recipe(
        make_recipe(
            training={
                "max_steps": 0,
                "epochs": 2,
                "batch_size": 50,
                "gradient_accumulation_steps": 2,
            }
        ),
        tmp_path / "b",
        epochs,
    )
    # 397 examples / 50 = 8 micro-batches = 4 optimizer steps per epoch.
    assert (
        plan_budget(
            397,
            make_recipe(
                training={
                    "max_steps": 0,
                    "epochs": 2,
                    "batch_size": 50,
                    "gradient_accumulation_steps": 2,
                }
            ).training,
        ).steps_per_epoch
        == 4
    )
    assert len(epochs.steps) == 8
    assert [s.current_epoch for s in epochs.steps] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert epochs.steps[-1].epoch == 2.0


def test_cancel_stops_between_steps_and_saves_no_adapter(data_dir, make_recipe, tmp_path):
    reporter = RecordingReporter(stop_after_step=3)
    with pytest.raises(RunCancelled):
        run_recipe(make_recipe(), tmp_path / "out", reporter)
    assert len(reporter.steps) == 3
    assert not (tmp_path / "out" / "adapter").exists()
    assert not list((tmp_path / "out").glob("*.zip"))


@pytest.mark.slow
def test_resume_continues_exactly_as_if_uninterrupted(data_dir, make_recipe, tmp_path, one_thread):
    recipe = make_recipe(
        training={"max_steps": 10, "checkpoint_every_steps": 3}, lora={"dropout": 0.1}
    )
    straight = RecordingReporter()
    run_recipe(recipe, tmp_path / "straight", straight)

    interrupted = RecordingReporter(stop_after_step=7)
    with pytest.raises(RunCancelled):
        run_recipe(recipe, tmp_path / "resumed", interrupted)
    checkpoints = complete_checkpoints(tmp_path / "resumed" / "checkpoints")
    assert [path.name for path in checkpoints] == ["step-00000003", "step-00000006"]

    resumed = RecordingReporter()
    run_recipe(recipe, tmp_path / "resumed", resumed)
    assert "resumed from the checkpoint at step 6" in resumed.logs
    assert [s.step for s in resumed.steps] == [7, 8, 9, 10]
    # The history before the checkpoint is handed on, for steps no one reported.
    assert [h["step"] for h in resumed.resumed_history] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in resumed.resumed_history] == [s.loss for s in straight.steps[:6]]
    assert [s.loss for s in resumed.steps] == [s.loss for s in straight.steps[6:]]

    first = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    second = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    history = [
        json.loads(line)["loss"]
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert history == [s.loss for s in straight.steps]


def test_a_paused_run_saves_its_checkpoint_and_resumes_every_step_once(
    data_dir, make_recipe, tmp_path, one_thread
):
    # Checkpoints every 50 steps: the only one is the pause's own.
    recipe = make_recipe(training={"max_steps": 5, "checkpoint_every_steps": 50})
    straight = RecordingReporter()
    run_recipe(recipe, tmp_path / "straight", straight)

    pausing = RecordingReporter(pause_after_step=2)
    with pytest.raises(RunPaused) as paused:
        run_recipe(recipe, tmp_path / "paused", pausing)
    assert paused.value.step == 2 and [s.step for s in pausing.steps] == [1, 2]
    checkpoints = complete_checkpoints(tmp_path / "paused" / "checkpoints")
    assert [path.name for path in checkpoints] == ["step-00000002"]
    assert not (tmp_path / "paused" / "adapter").exists()

    resumed = RecordingReporter()
    run_recipe(recipe, tmp_path / "paused", resumed)
    assert "resumed from the checkpoint at step 2" in resumed.logs
    assert [s.step for s in resumed.steps] == [3, 4, 5]
    assert [s.loss for s in pausing.steps + resumed.steps] == [s.loss for s in straight.steps]


@pytest.mark.slow
def test_checkpoints_handed_on_resume_a_run_elsewhere(data_dir, make_recipe, tmp_path):
    # What a worker on a cluster without a shared disk does: each complete checkpoint goes
    # to on_checkpoint (the worker uploads it), and the next attempt resumes from the copy.
    recipe = make_recipe(training={"max_steps": 8, "checkpoint_every_steps": 3})
    handed: list[str] = []

    def keep(checkpoint):
        assert (checkpoint / "COMPLETE").is_file()
        handed.append(checkpoint.name)
        shutil.copytree(checkpoint, tmp_path / "elsewhere" / checkpoint.name, dirs_exist_ok=True)

    with pytest.raises(RunCancelled):
        run_recipe(
            recipe, tmp_path / "node-a", RecordingReporter(stop_after_step=7), on_checkpoint=keep
        )
    assert handed == ["step-00000003", "step-00000006"]

    resumed = RecordingReporter()
    run_recipe(recipe, tmp_path / "node-b", resumed, checkpoint_dir=tmp_path / "elsewhere")
    assert "resumed from the checkpoint at step 6" in resumed.logs
    assert [s.step for s in resumed.steps] == [7, 8]


@pytest.mark.slow
def test_half_written_checkpoint_is_ignored(data_dir, make_recipe, tmp_path):
    recipe = make_recipe(training={"max_steps": 6, "checkpoint_every_steps": 2})
    with pytest.raises(RunCancelled):
        run_recipe(recipe, tmp_path / "out", RecordingReporter(stop_after_step=5))
    newest = complete_checkpoints(tmp_path / "out" / "checkpoints")[-1]
    (newest / "COMPLETE").unlink()  # as if the process died before the marker
    reporter = RecordingReporter()
    run_recipe(recipe, tmp_path / "out", reporter)
    assert "resumed from the checkpoint at step 2" in reporter.logs
    assert [s.step for s in reporter.steps] == [3, 4, 5, 6]


@pytest.mark.slow
def test_checkpoints_of_another_recipe_are_not_resumed(data_dir, make_recipe, tmp_path):
    with pytest.raises(RunCancelled):
        run_recipe(make_recipe(), tmp_path / "out", RecordingReporter(stop_after_step=5))
    reporter = RecordingReporter()
    run_recipe(make_recipe(training={"learning_rate": 1e-3}), tmp_path / "out", reporter)
    assert reporter.steps[0].step == 1
    assert not any("resumed" in line for line in reporter.logs)


def test_unknown_target_module_is_rejected_before_training(data_dir, make_recipe, tmp_path):
    reporter = RecordingReporter()
    with pytest.raises(ConfigError) as caught:
        run_recipe(
            make_recipe(lora={"target_modules": ["q_proj", "qkv_proj"]}), tmp_path / "out", reporter
        )
    assert caught.value.problems[0].field == "lora.target_modules"
    assert "qkv_proj" in caught.value.message and "v_proj" in caught.value.message
    assert reporter.steps == []


def test_missing_dataset_file_is_named(data_dir, make_recipe, tmp_path):
    with pytest.raises(ConfigError) as caught:
        run_recipe(
            make_recipe(dataset=tmp_path / "nope.jsonl"), tmp_path / "out", RecordingReporter()
        )
    assert caught.value.problems[0].field == "datasets.0"
    assert "nope.jsonl" in caught.value.message


def test_non_finite_loss_fails_at_once_as_a_user_error(
    demo_model_dir, demo_dataset, make_recipe, tmp_path
):
    # AdamW bounds each update, so even learning_rate 1 saturates rather than overflows on
    # the demo model; an output head past fp32's range gives the same NaN in one step.
    recipe = make_recipe(training={"learning_rate": 1.0, "checkpoint_every_steps": 1})
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=512, seed=1)
    model, _ = attach_lora(
        load_model(demo_model_dir, FP32, CPU), recipe.lora, gradient_checkpointing=False
    )
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(float("inf"))
    reporter = RecordingReporter()
    setup = TrainSetup(
        model,
        data.examples,
        recipe.training,
        FP32,
        CPU,
        tokenizer.pad_token_id,
        tmp_path / "ckpt",
        "fp",
    )
    with pytest.raises(TrainingDiverged) as caught:
        train(setup, reporter)
    assert caught.value.code == "diverged" and not caught.value.transient
    assert "step 1" in caught.value.message
    assert caught.value.kept_weights is None  # no healthy step to keep
    assert "learning_rate" in caught.value.hint and "lora.alpha" in caught.value.hint
    assert reporter.steps == []  # no NaN ever reaches a report
    assert complete_checkpoints(tmp_path / "ckpt") == []


def test_any_failure_after_the_lora_save_is_an_export_failure(
    data_dir, make_recipe, tmp_path, monkeypatch
):
    import tunery.pipeline.recipe as recipe_module

    def sampling_overflows(**_: object) -> None:
        raise ValueError("Requested tokens (3000) exceed context window of 2048")

    monkeypatch.setattr(recipe_module, "_preflight_gguf", lambda *args: None)
    monkeypatch.setattr(recipe_module, "export_gguf", sampling_overflows)
    reporter = RecordingReporter()
    result = run_recipe(
        make_recipe(training={"max_steps": 2}, export={"gguf": True}), tmp_path / "out", reporter
    )
    assert result.summary["status"] == "failed"
    assert result.summary["error"]["code"] == "gguf_export_failed"
    assert "exceed context window" in result.summary["error"]["message"]
    assert result.lora_bundle.is_file() and result.gguf_bundle is None
    assert len(result.samples) == 3  # from the trained model instead
    assert reporter.phases[-2:] == ["exporting", "sampling"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["artifacts"]["gguf"] is None


def test_sample_prompt_longer_than_the_context_is_refused_before_training(
    data_dir, make_recipe, tmp_path
):
    reporter = RecordingReporter()
    recipe = make_recipe(
        training={"max_seq_length": 64}, samples={"prompts": ["ok", "word " * 200]}
    )
    with pytest.raises(ConfigError) as caught:
        run_recipe(recipe, tmp_path / "out", reporter)
    assert [problem.field for problem in caught.value.problems] == ["samples.prompts.1"]
    assert reporter.steps == []
