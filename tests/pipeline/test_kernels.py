"""Attention and loss kernels against their references on the demo model (CPU, fp32).

Tolerances: fp32 sums taken in a different order (per example instead of per row, in
chunks instead of at once) agree to about 1e-6 relative; the tests allow 1e-5 on losses
and, on gradients, 1e-4 of the tensor's largest entry (single entries near zero differ by
more than 1e-4 of themselves).
"""

from __future__ import annotations

import pytest
import torch

from tunery.pipeline.attention import (
    attention_in_use,
    attention_inputs,
    choose_attention,
    implementation_name,
)
from tunery.pipeline.chat import IGNORE, Example
from tunery.pipeline.config import LoraSettings
from tunery.pipeline.data import prepare_data
from tunery.pipeline.kernels import Kernels, apply_kernels, choose_kernels
from tunery.pipeline.load import Precision, load_model, load_tokenizer
from tunery.pipeline.lora import attach_lora
from tunery.pipeline.loss import ChunkedLinearCrossEntropy, choose_loss
from tunery.pipeline.packing import batch_loss_sum, pack

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, None)
CPU_ATTENTION = ["sdpa", "sdpa_segments"]


@pytest.fixture(scope="module")
def demo(demo_model_dir, demo_dataset):
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=256, seed=1)
    return demo_model_dir, tokenizer.pad_token_id, data.examples[:5]


def adapted_model(model_dir):
    torch.manual_seed(0)
    model, _ = attach_lora(
        load_model(model_dir, FP32, CPU),
        LoraSettings(rank=8, alpha=16, dropout=0.0),
        gradient_checkpointing=False,
    )
    with torch.no_grad():  # B starts at zero; make the adapter matter for the gradients
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    return model


def assert_gradients_close(actual, expected):
    assert actual.keys() == expected.keys()
    for name, gradient in expected.items():
        scale = gradient.abs().max().item()
        torch.testing.assert_close(actual[name], gradient, rtol=0, atol=1e-4 * scale)


def loss_and_gradients(model, batch, pad_id, *, attention, loss):
    model.zero_grad(set_to_none=True)
    with attention_in_use(model, attention):
        value = batch_loss_sum(model, pack(batch, pad_id, CPU, attention), loss)
    value.backward()
    gradients = {
        name: parameter.grad.clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    return value.detach(), gradients


@pytest.mark.parametrize("attention", CPU_ATTENTION)
def test_packed_loss_equals_the_examples_alone_for_every_cpu_attention(demo, attention):
    model_dir, pad_id, batch = demo
    model = load_model(model_dir, FP32, CPU).eval()
    with torch.no_grad(), attention_in_use(model, attention):
        packed = pack(batch, pad_id, CPU, attention)
        together = batch_loss_sum(model, packed, "chunked")
        alone = sum(
            batch_loss_sum(model, pack([example], pad_id, CPU, attention), "chunked")
            for example in batch
        )
    assert packed.real_tokens == sum(len(example.input_ids) for example in batch)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_both_losses_count_the_same_exact_predictions(demo):
    """The step's mean token accuracy: targets whose greedy prediction is right, counted from
    the logits each loss computes anyway, equal to a count from the full logits."""
    from tunery.pipeline.chat import IGNORE
    from tunery.pipeline.packing import batch_loss_and_hits

    model_dir, pad_id, batch = demo
    model = adapted_model(model_dir).eval()
    with torch.no_grad(), attention_in_use(model, "sdpa"):
        packed = pack(batch, pad_id, CPU, "sdpa")
        counts = {
            kind: batch_loss_and_hits(model, packed, kind)[1].item()
            for kind in ("logits", "chunked")
        }
        logits = model(**packed.forward_inputs(), use_cache=False).logits
    trained = packed.targets != IGNORE
    expected = (logits.argmax(dim=-1)[trained] == packed.targets[trained]).sum().item()
    assert counts == {"logits": expected, "chunked": expected}
    assert 0 < expected < trained.sum().item()


def test_attention_kinds_give_the_same_loss_and_gradients(demo):
    model_dir, pad_id, batch = demo
    model = adapted_model(model_dir)
    reference = loss_and_gradients(model, batch, pad_id, attention="sdpa", loss="logits")
    segments = loss_and_gradients(model, batch, pad_id, attention="sdpa_segments", loss="logits")
    torch.testing.assert_close(segments[0], reference[0], rtol=1e-5, atol=1e-5)
    assert_gradients_close(segments[1], reference[1])


def test_chunked_loss_and_gradients_equal_the_full_logits_reference(demo, monkeypatch):
    import tunery.pipeline.loss as loss_module

    model_dir, pad_id, batch = demo
    model = adapted_model(model_dir)
    reference = loss_and_gradients(model, batch, pad_id, attention="sdpa", loss="logits")
    # 7 positions per chunk: many chunks, the last one partial.
    monkeypatch.setattr(loss_module, "LOGITS_CHUNK_ELEMENTS", 7 * 1024)
    chunked = loss_and_gradients(model, batch, pad_id, attention="sdpa", loss="chunked")
    torch.testing.assert_close(chunked[0], reference[0], rtol=1e-5, atol=1e-5)
    assert_gradients_close(chunked[1], reference[1])


@pytest.mark.parametrize("chunk", [1, 3, 50])
def test_chunked_cross_entropy_matches_torch_with_any_chunk(chunk):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(20, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 40, (20,), generator=generator)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (expected_gradient,) = torch.autograd.grad(expected * 3.0, hidden)
    actual = ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk)
    (actual_gradient,) = torch.autograd.grad(actual * 3.0, hidden)  # upstream gradient scales
    torch.testing.assert_close(actual.double(), expected)
    torch.testing.assert_close(actual_gradient, expected_gradient)


def test_cpu_choices_are_per_example_attention_and_the_chunked_loss(demo):
    model = adapted_model(demo[0])
    kernels = choose_kernels(model, CPU, max_length=512, half_precision=False)
    assert (kernels.attention, kernels.loss) == ("sdpa_segments", "chunked")
    assert not kernels.fused_layers and not kernels.compiled
    recorded = kernels.as_dict()
    assert set(recorded["reasons"]) == {
        "attention",
        "loss",
        "fused_layers",
        "lora",
        "compile",
    }
    assert recorded["attention"] == "sdpa_segments" and recorded["compile"] is False
    assert recorded["lora"] == "addmm"


def test_the_lora_addmm_gives_the_references_loss_and_gradients(demo):
    model_dir, pad_id, batch = demo
    reference_model = adapted_model(model_dir)
    reference = loss_and_gradients(
        reference_model, batch, pad_id, attention="sdpa_segments", loss="chunked"
    )
    model = adapted_model(model_dir)
    apply_kernels(
        model,
        Kernels("sdpa_segments", "chunked", lora_addmm=True),
    )
    patched = {type(module).__name__ for module in model.modules() if "forward" in vars(module)}
    assert patched == {"Linear"}  # PEFT's LoRA layers
    fused = loss_and_gradients(model, batch, pad_id, attention="sdpa_segments", loss="chunked")
    torch.testing.assert_close(fused[0], reference[0], rtol=1e-5, atol=1e-5)
    assert_gradients_close(fused[1], reference[1])
    # With the adapter disabled (the base model's sample answers) PEFT's own path runs.
    with torch.no_grad(), model.disable_adapter(), attention_in_use(model, "sdpa_segments"):
        base = batch_loss_sum(model, pack(batch, pad_id, CPU, "sdpa_segments"), "chunked")
    with (
        torch.no_grad(),
        reference_model.disable_adapter(),
        attention_in_use(reference_model, "sdpa_segments"),
    ):
        expected = batch_loss_sum(
            reference_model, pack(batch, pad_id, CPU, "sdpa_segments"), "chunked"
        )
    torch.testing.assert_close(base, expected, rtol=1e-5, atol=1e-5)


def test_models_the_fast_paths_do_not_cover_fall_back_to_the_references(demo):
    model = adapted_model(demo[0])
    config = model.get_base_model().config
    config.sliding_window = 128
    kind, reason = choose_attention(
        model.get_base_model(), CPU, max_length=512, half_precision=False
    )
    assert kind == "sdpa" and "sliding window" in reason
    config.sliding_window = None
    config.final_logit_softcapping = 30.0
    assert choose_loss(model, CPU)[0] == "logits"
    config.final_logit_softcapping = None
    model.get_base_model().get_output_embeddings().weight.requires_grad_(True)
    assert choose_loss(model, CPU) == ("logits", "the output head is trained")


def test_attention_is_switched_for_the_loop_only(demo):
    model = adapted_model(demo[0])
    before = model.get_base_model().config._attn_implementation
    with attention_in_use(model, "sdpa_segments"):
        assert model.get_base_model().config._attn_implementation == implementation_name(
            "sdpa_segments"
        )
    assert model.get_base_model().config._attn_implementation == before


def test_flattened_packing_is_one_row_without_padding():
    examples = [Example(list(range(n)), [IGNORE] * (n - 1) + [5]) for n in (5, 3, 7)]
    packed = pack(examples, pad_id=0, device=CPU, attention="sdpa_segments")
    assert packed.input_ids.shape == (1, 15)
    assert packed.position_ids[0].tolist() == [*range(5), *range(3), *range(7)]
    assert packed.attention_inputs == {"tunery_segment_lengths": (5, 3, 7)}
    flash = attention_inputs("flash_attention_2", (5, 3, 7), CPU)
    assert flash["cu_seq_lens_q"].tolist() == [0, 5, 8, 15]
    assert flash["cu_seq_lens_q"].dtype == torch.int32 and flash["max_length_q"] == 7


def test_run_json_records_the_kernels_chosen(data_dir, make_recipe, tmp_path):
    from tunery.pipeline.recipe import run_recipe
    from tunery.pipeline.reporting import RecordingReporter

    reporter = RecordingReporter()
    result = run_recipe(make_recipe(training={"max_steps": 2}), tmp_path / "out", reporter)
    kernels = result.summary["kernels"]
    assert kernels["attention"] == "sdpa_segments" and kernels["loss"] == "chunked"
    assert kernels["compile"] is False and kernels["fused_layers"] == "none"
    assert kernels["lora"] == "addmm"
    assert any(line.startswith("attention sdpa_segments") for line in reporter.logs)


def test_the_lora_addmm_takes_peft_s_sum_for_a_16_bit_base_outside_autocast(demo):
    # As when samples are generated on a GPU: bf16 base weights, fp32 adapters, no autocast.
    model_dir, pad_id, batch = demo
    bf16 = Precision(torch.bfloat16, None)

    def bf16_adapted():
        torch.manual_seed(0)
        model, _ = attach_lora(
            load_model(model_dir, bf16, CPU),
            LoraSettings(rank=8, alpha=16, dropout=0.0),
            gradient_checkpointing=False,
        )
        return model.eval()

    reference, patched = bf16_adapted(), bf16_adapted()
    apply_kernels(patched, Kernels("sdpa_segments", "chunked", lora_addmm=True))
    packed = pack(batch, pad_id, CPU, "sdpa_segments")
    with torch.no_grad(), attention_in_use(reference, "sdpa_segments"):
        expected = batch_loss_sum(reference, packed, "chunked")
    with torch.no_grad(), attention_in_use(patched, "sdpa_segments"):
        actual = batch_loss_sum(patched, packed, "chunked")
    torch.testing.assert_close(actual, expected)
