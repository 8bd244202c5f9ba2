"""Chat parameters honoured, through the real SDK against a real server and a real model.

One job fine-tunes the demo model on weather questions answered with a ``get_weather`` tool
call (``<tool_call>{…}</tool_call>``, as Hermes-style templates ask) beside ordinary demo
rows; the tests chat with its GGUF. A model this small does not learn the call's format in
a test's budget, so tool calls here come from the grammar (``tool_choice`` naming the tool,
or ``required``), as JSON answers do: the model was never taught JSON.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_harness import wait_until

import openai

pytestmark = pytest.mark.slow

CITIES = ["Paris", "Rome", "Oslo", "Madrid", "Berlin", "Vienna", "Lisbon", "Prague"]
ANIMALS = [("cat", 4), ("dog", 4), ("bird", 2), ("horse", 4), ("spider", 8), ("ant", 6)]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": CITIES}},
            "required": ["city"],
        },
    },
}
ANIMAL_SCHEMA = {
    "type": "object",
    "properties": {
        "animal": {"type": "string", "enum": [name for name, _ in ANIMALS]},
        "legs": {"type": "integer", "enum": [2, 4, 6, 8]},
    },
    "required": ["animal", "legs"],
    "additionalProperties": False,
}


def tool_rows(demo_dataset: Path, path: Path) -> Path:
    """Weather questions answered with a tool call, and some demo rows answered in words."""
    chance = random.Random(7)
    lines = []
    for _ in range(80):
        city = chance.choice(CITIES)
        call = json.dumps({"name": "get_weather", "arguments": {"city": city}})
        messages = [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": f"<tool_call>{call}</tool_call>"},
        ]
        lines.append(json.dumps({"messages": messages}))
    lines += demo_dataset.read_text().splitlines()[:40]
    chance.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def client(api_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=api_server.token, max_retries=0)


@pytest.fixture(scope="module")
def model(client, demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    data = tool_rows(demo_dataset, tmp_path_factory.mktemp("chat") / "tools.jsonl")
    training = client.files.create(file=data.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tunery/demo-tiny",
        training_file=training.id,
        seed=42,  # the seed the model was checked to learn the tool call with
        extra_body={
            "tunery": {
                "training": {
                    "max_steps": 60,
                    "learning_rate": 3e-3,
                    "batch_size": 4,
                    "warmup_ratio": 0.0,
                    "gradient_checkpointing": False,
                },
                "lora": {"rank": 16, "alpha": 32, "dropout": 0.0},
                "export": {"gguf": True},
                "samples": {"max_new_tokens": 8},
            }
        },
    )

    def done() -> Any:
        current = client.fine_tuning.jobs.retrieve(job.id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    final = wait_until(done, timeout=1200, interval=2, what="the tool-calling job")
    assert final.status == "succeeded", final.error
    return final.fine_tuned_model


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_json_mode_answers_parseable_json(client, model) -> None:
    # The grammar makes every token JSON, but only the model ends the object: asked what it
    # was never taught, the demo model fills one string until max_tokens on some CPUs. A
    # weather question, which it was taught to answer with an object in a tool call, ends.
    answer = client.chat.completions.create(
        model=model,
        messages=ask("What is the weather in Paris?"),
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=64,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(json.loads(choice.message.content), dict)


def test_a_json_schema_is_followed(client, model) -> None:
    answer = client.chat.completions.create(
        model=model,
        messages=ask("Tell me about a spider."),  # not a prompt it was trained to answer in JSON
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "animal", "schema": ANIMAL_SCHEMA, "strict": True},
        },
        temperature=0,
        max_tokens=64,
    )
    value = json.loads(answer.choices[0].message.content)
    assert set(value) == {"animal", "legs"}
    assert value["animal"] in dict(ANIMALS) and value["legs"] in (2, 4, 6, 8)


def test_a_named_tool_comes_back_as_tool_calls(client, model) -> None:
    answer = client.chat.completions.create(
        model=model,
        messages=ask("Spell the word river."),  # forced: it must call the tool anyway
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=32,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments)["city"] in CITIES


def test_with_tools_offered_an_answer_in_words_stays_words(client, model) -> None:
    # tool_choice auto (the default with tools): the model may answer either way; an answer
    # that is no call is never read as one (the reading itself: tests/unit/test_chat_engine.py).
    talked = client.chat.completions.create(
        model=model, messages=ask("Spell the word river."), tools=[WEATHER], temperature=0
    )
    assert talked.choices[0].finish_reason in ("stop", "length")
    assert talked.choices[0].message.tool_calls is None
    assert talked.choices[0].message.content


@pytest.mark.parametrize("tool_choice", ["required", "named"])
def test_tool_calls_are_streamed(client, model, tool_choice) -> None:
    choice: Any = tool_choice
    if tool_choice == "named":
        choice = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(
        model=model,
        messages=ask("What is the weather in Oslo?"),
        tools=[WEATHER],
        tool_choice=choice,
        temperature=0,
        max_tokens=120,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta_call.index, {"name": "", "arguments": "", "id": ""})
            call["id"] += delta_call.id or ""
            call["name"] += delta_call.function.name or ""
            call["arguments"] += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"])["city"] in CITIES


def test_logprobs_cover_every_token(client, model) -> None:
    answer = client.chat.completions.create(
        model=model,
        messages=ask("Spell the word river."),
        logprobs=True,
        top_logprobs=3,
        temperature=0,
        max_tokens=12,
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(item.token for item in content) == answer.choices[0].message.content
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)
        assert bytes(item.bytes).decode() == item.token


def test_a_stream_ends_with_its_usage_and_matches_the_whole_answer(client, model) -> None:
    request: dict[str, Any] = {
        "model": model,
        "messages": ask("What is 5 plus 35?"),
        "temperature": 0,
        "max_tokens": 20,
    }
    whole = client.chat.completions.create(**request)
    chunks = list(
        client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    *body, last = chunks
    assert last.choices == [] and last.usage == whole.usage
    assert all(chunk.usage is None for chunk in body)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in body)
    assert text == whole.choices[0].message.content


def test_several_choices_seeds_and_stops(client, model) -> None:
    request: dict[str, Any] = {
        "model": model,
        "messages": ask("Spell the word silver."),
        "temperature": 1.0,
        "seed": 11,
        "max_tokens": 16,
    }
    two = client.chat.completions.create(**request, n=2)
    assert [choice.index for choice in two.choices] == [0, 1]
    again = client.chat.completions.create(**request, n=2)
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]
    one = client.chat.completions.create(**request)
    assert one.choices[0].message.content == two.choices[0].message.content
    assert two.usage.completion_tokens > one.usage.completion_tokens
    # A stop string is cut where it first occurs: one taken from the greedy answer itself.
    greedy = {**request, "temperature": 0}
    free = client.chat.completions.create(**greedy).choices[0].message.content
    stop = free[4:7]
    stopped = client.chat.completions.create(**greedy, stop=[stop]).choices[0]
    assert (stopped.message.content, stopped.finish_reason) == (free[: free.index(stop)], "stop")


def test_a_stream_abandoned_midway_frees_the_model(api_server, client, model) -> None:
    body = {"model": model, "messages": ask("Spell the word river."), "max_tokens": 200}
    headers = {"Authorization": f"Bearer {api_server.token}"}
    with httpx.stream(
        "POST",
        f"{api_server.url}/v1/chat/completions",
        json={**body, "stream": True},
        headers=headers,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # then hang up
    answer = client.chat.completions.create(model=model, messages=ask("Hello"), max_tokens=4)
    assert answer.choices[0].message.content is not None


def test_a_tool_result_goes_back_to_the_model(client, model) -> None:
    answer = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 degrees"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=12,
    )
    assert answer.choices[0].message.tool_calls is None
    assert answer.usage.prompt_tokens > 20
