"""SmolLM2-135M-Instruct through a real ``tunery serve``: listed, trained, exported to a GGUF
that llama.cpp recognises, a Modelfile that Go renders as the chat template does, samples
answered by the GGUF, and a chat through ``/v1/chat/completions`` with the real SDK.

One run trains (four steps, GGUF export) and is shared by the module's tests.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_harness import Client, Server, payload, prepare_root, running_server, server_env
from llama_cpp import Llama

from tunery.catalog.smollm2 import SMOLLM2_MODEL_ID, SMOLLM2_PARAMETERS
from tunery.gguf.verify import native_output_captured

openai = pytest.importorskip("openai", reason="the chat test drives /v1 with the openai package")

pytestmark = pytest.mark.real

# Conversations the Modelfile must render exactly as the chat template does: SmolLM2's
# default system prompt, a system prompt of the user's, several turns.
CONVERSATIONS = [
    [("user", "What is the capital of France?")],
    [("system", "Answer in one word."), ("user", "Capital of Peru?")],
    [
        ("user", "What is 2 plus 3?"),
        ("assistant", "2 plus 3 is 5."),
        ("user", "And 4 plus 4?"),
    ],
]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path, smollm2_model_dir: Path
) -> Iterator[Server]:
    root = prepare_root(tmp_path_factory.mktemp("real") / "data", demo_model_dir)
    (root / "models" / "smollm2-135m-instruct").symlink_to(smollm2_model_dir)
    with running_server(root, server_env(root)) as running:
        yield running


@pytest.fixture(scope="module")
def finished(server: Server, demo_dataset: Path, real_training: dict[str, Any]) -> dict[str, Any]:
    """A run on SmolLM2 submitted over the API and followed to its end."""
    api = Client(server)
    body = payload(
        api.dataset(demo_dataset),
        "smollm2-run",
        base_model=SMOLLM2_MODEL_ID,
        training=real_training,
        lora={"rank": 8, "alpha": 16},
        export={"gguf": True},
        samples={"max_new_tokens": 32},
    )
    estimate = api.http.post("/runs/estimate", json=body)
    assert estimate.status_code == 200, estimate.text
    run = api.submit_ok(body)
    final = api.wait_terminal(run["id"], timeout=1200)
    assert final["status"] == "completed", (final.get("error"), api.logs(run["id"]))
    return {"api": api, "run": final, "estimate": estimate.json()}


def download(api: Client, run: dict[str, Any], artifact: str, target: Path) -> Path:
    link = api.http.post(f"/hub/{run['hub_entry_id']}/artifacts/{artifact}/url").json()
    response = httpx.get(link["url"], timeout=120)
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(target)
    return target


def test_the_server_lists_it_and_estimates_it_by_its_shape(finished):
    models = {model["id"]: model for model in finished["api"].http.get("/models").json()}
    assert models[SMOLLM2_MODEL_ID]["family"] == "smollm"
    assert models[SMOLLM2_MODEL_ID]["parameters"] == SMOLLM2_PARAMETERS
    estimate = finished["estimate"]
    assert estimate["parameters"] == SMOLLM2_PARAMETERS
    assert estimate["total_steps"] == finished["run"]["metrics"]["total_steps"] == 4


def test_samples_are_answered_by_the_gguf_and_stop(finished):
    samples = finished["run"]["samples"]
    assert len(samples) == 3
    assert all(sample["source"] == "gguf" for sample in samples)
    assert any(sample["stopped"] and sample["response"].strip() for sample in samples)


def test_the_gguf_is_recognised_and_its_modelfile_renders_as_the_template(
    finished, smollm2_model_dir, go_render, tmp_path
):
    from transformers import AutoTokenizer

    folder = download(finished["api"], finished["run"], "gguf", tmp_path / "gguf")
    with native_output_captured():
        vocab = Llama(model_path=str(folder / "model.gguf"), vocab_only=True, verbose=False)
    # The converter recognised the tokenizer by its own hash: tunery's regex fallback would
    # have named it gpt-2.
    assert vocab.metadata["tokenizer.ggml.pre"] == "smollm"
    assert vocab.metadata["tokenizer.ggml.add_bos_token"] == "false"

    modelfile = (folder / "Modelfile").read_text()
    assert re.findall(r"^PARAMETER stop (.*)$", modelfile, re.M) == ['"<|im_end|>"']
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M)
    assert template is not None
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model_dir)
    rendered = go_render(template.group(1), CONVERSATIONS)
    for conversation, text in zip(CONVERSATIONS, rendered, strict=True):
        messages = [{"role": role, "content": content} for role, content in conversation]
        expected = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert text == expected
        # What Ollama would feed llama.cpp: the same token ids transformers trains on.
        ids = vocab.tokenize(text.encode(), add_bos=True, special=True)
        assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_chat_through_the_openai_api(server, finished):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)
    answer = client.chat.completions.create(
        model=finished["run"]["id"],
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert "Paris" in choice.message.content


def test_the_lora_bundle_names_the_catalog_model(finished, tmp_path):
    import json

    folder = download(finished["api"], finished["run"], "lora", tmp_path / "lora")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == SMOLLM2_MODEL_ID
    assert "<|im_start|>system" in (folder / "chat_template.jinja").read_text()
