"""GGUF export end to end with real llama.cpp: bundles, gates, families, faults, pre-flight."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from llama_cpp import Llama

from tunery.errors import ConfigError
from tunery.gguf.export import GGUF_BUNDLE_FILES, gguf_samples
from tunery.gguf.verify import GGUF_FILE_TYPES, gguf_file_type, native_output_captured
from tunery.pipeline.chat import SamplePrompt
from tunery.pipeline.datasets import Message
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reexport import rerun_export
from tunery.pipeline.reporting import RecordingReporter
from tunery.pipeline.save import LORA_BUNDLE_FILES

EXPORT_TRAINING = {"max_steps": 60, "learning_rate": 5e-3, "checkpoint_every_steps": 100}


def unzip(bundle: Path, target: Path) -> Path:
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(target)
    return target


def chat(gguf: Path, question: str, max_tokens: int = 48) -> dict:
    with native_output_captured():
        runner = Llama(model_path=str(gguf), n_ctx=512, verbose=False)
    return runner.create_chat_completion(
        messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
    )["choices"][0]


def assert_verified_bundle(result, tmp_path: Path) -> Path:
    assert result.completed, result.summary["error"]
    with zipfile.ZipFile(result.gguf_bundle) as archive:
        assert sorted(archive.namelist()) == sorted(GGUF_BUNDLE_FILES)
        install = archive.getinfo("install.sh")
        assert (install.external_attr >> 16) & 0o111  # executable once unzipped
    folder = unzip(result.gguf_bundle, tmp_path / "gguf")
    assert gguf_file_type(folder / "model.gguf") == GGUF_FILE_TYPES["Q4_K_M"]
    checks = result.summary["export"]["checks"]
    assert checks["min_cosine"] > 0.999 and checks["max_kl"] < 1e-3
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf")
    assert 'TEMPLATE """' in modelfile and "PARAMETER stop" in modelfile
    assert all(sample["source"] == "gguf" for sample in result.samples)
    return folder / "model.gguf"


@pytest.mark.slow
def test_demo_run_exports_a_verified_bundle_that_stops(data_dir, make_recipe, tmp_path):
    reporter = RecordingReporter()
    result = run_recipe(
        make_recipe(
            training=EXPORT_TRAINING, export={"gguf": True}, samples={"max_new_tokens": 48}
        ),
        tmp_path / "out",
        reporter,
    )
    gguf = assert_verified_bundle(result, tmp_path)
    assert reporter.phases[-2:] == ["exporting", "sampling"]
    assert result.summary["artifacts"] == {"lora": "test-run-lora.zip", "gguf": "test-run-gguf.zip"}
    modelfile = (gguf.parent / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|begin_of_text|>" not in modelfile  # llama.cpp and Ollama add BOS themselves
    answer = chat(gguf, "What is the capital of France?")
    assert answer["finish_reason"] == "stop"
    assert answer["message"]["content"].startswith("The capital of")
    assert not list((tmp_path / "out").glob(".gguf-export-*"))  # scratch removed


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "mistral-spm"])
def test_other_families_convert_pass_the_gates_and_stop(
    family, tiny_model_dir, chat_without_system, data_dir, make_recipe, tmp_path
):
    recipe = make_recipe(
        base_model=str(tiny_model_dir(family)),
        dataset=chat_without_system,
        training=EXPORT_TRAINING,
        lora={"rank": 16, "alpha": 32},
        export={"gguf": True},
        samples={"max_new_tokens": 40},
    )
    result = run_recipe(recipe, tmp_path / "out", RecordingReporter())
    gguf = assert_verified_bundle(result, tmp_path)
    assert any(sample["stopped"] for sample in result.samples)
    metadata = Llama(model_path=str(gguf), vocab_only=True, verbose=False).metadata
    expected_pre = {"qwen2": "qwen2", "mistral-spm": "default"}[family]
    assert metadata.get("tokenizer.ggml.pre") == expected_pre
    assert metadata["tokenizer.ggml.model"] == {"qwen2": "gpt2", "mistral-spm": "llama"}[family]


@pytest.mark.slow
def test_disk_full_mid_export_keeps_the_lora_and_rerun_needs_no_training(
    data_dir, make_recipe, tmp_path
):
    """Writes past 2 MiB fail with EFBIG once export starts, as on a full disk."""

    class FillDiskOnExport(RecordingReporter):
        def phase(self, name: str) -> None:
            super().phase(name)
            if name == "exporting":
                resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, limits[1]))

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    out = tmp_path / "out"
    try:
        result = run_recipe(make_recipe(export={"gguf": True}), out, FillDiskOnExport())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)

    assert result.summary["status"] == "failed"
    assert result.summary["error"]["code"] == "gguf_export_failed"
    assert "File too large" in result.summary["error"]["message"]
    assert "tunery export" in result.summary["error"]["hint"]
    assert result.gguf_bundle is None and result.summary["artifacts"]["gguf"] is None
    leftovers = [p.name for p in out.iterdir() if "gguf" in p.name]
    assert leftovers == []  # no partial bundle, no scratch folder
    with zipfile.ZipFile(result.lora_bundle) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(LORA_BUNDLE_FILES)
    assert result.samples and all(s.get("source") != "gguf" for s in result.samples)
    metrics_before = (out / "metrics.jsonl").read_bytes()

    rerun = rerun_export(out, RecordingReporter())
    assert_verified_bundle(rerun, tmp_path)
    saved = json.loads((out / "run.json").read_text())
    assert saved["status"] == "completed" and saved["error"] is None
    assert saved["artifacts"]["gguf"] == "test-run-gguf.zip"
    assert (out / "metrics.jsonl").read_bytes() == metrics_before  # nothing retrained


def test_unconvertible_tokenizer_is_refused_before_training(
    demo_model_dir, data_dir, make_recipe, tmp_path
):
    odd = tmp_path / "odd-tokenizer"
    shutil.copytree(demo_model_dir, odd)
    tokenizer = json.loads((odd / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}|\s+|."
    (odd / "tokenizer.json").write_text(json.dumps(tokenizer))
    reporter = RecordingReporter()
    with pytest.raises(ConfigError) as caught:
        run_recipe(
            make_recipe(base_model=str(odd), export={"gguf": True}), tmp_path / "out", reporter
        )
    problem = caught.value.problems[0]
    assert problem.field == "export.gguf"
    assert "pre-tokenizer" in problem.message
    assert "export.gguf to false" in caught.value.hint
    assert reporter.steps == [] and not (tmp_path / "out" / "checkpoints").exists()


def test_chat_template_ollama_cannot_express_is_refused_before_training(
    demo_model_dir, data_dir, make_recipe, tmp_path
):
    clever = tmp_path / "clever-template"
    shutil.copytree(demo_model_dir, clever)
    (clever / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] | length > 20 %}[long] {% endif %}{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ConfigError) as caught:
        run_recipe(
            make_recipe(base_model=str(clever), export={"gguf": True}),
            tmp_path / "out",
            RecordingReporter(),
        )
    assert caught.value.problems[0].field == "export.gguf"
    assert "Ollama TEMPLATE" in caught.value.message


def test_missing_converter_checkout_is_refused_before_training(
    data_dir, make_recipe, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUNERY_LLAMA_CPP_DIR", str(tmp_path / "no-llama-cpp"))
    with pytest.raises(ConfigError) as caught:
        run_recipe(make_recipe(export={"gguf": True}), tmp_path / "out", RecordingReporter())
    assert "convert_hf_to_gguf.py" in caught.value.message


@pytest.mark.slow
def test_a_sample_that_runs_out_of_tokens_is_flagged(data_dir, make_recipe, tmp_path):
    result = run_recipe(
        make_recipe(training=EXPORT_TRAINING, export={"gguf": True}),
        tmp_path / "out",
        RecordingReporter(),
    )
    gguf = unzip(result.gguf_bundle, tmp_path / "gguf") / "model.gguf"
    prompt = SamplePrompt((Message("user", "Count from 1 to 60."),), None)
    [sample] = gguf_samples(gguf, [prompt], max_new_tokens=3)
    assert sample["stopped"] is False and sample["tokens"] == 3


def test_export_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tunery.cli", "export", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "is not a run directory" in result.stderr
