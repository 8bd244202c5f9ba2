"""Every chat parameter tunery cannot honour is refused by name, through the real SDK.

The request is checked before any model is looked up, so these tests need no trained model.
"""

from __future__ import annotations

from typing import Any

import pytest

import openai

MESSAGES = [{"role": "user", "content": "Hello"}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
SCHEMA = {"name": "answer", "schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"extra_body": {"temprature": 0.5}}, "temprature"),
        ({"extra_body": {"functions": [{"name": "f"}]}}, "functions"),
        ({"extra_body": {"function_call": "auto"}}, "function_call"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"store": True}, "store"),
        ({"metadata": {"a": "b"}}, "metadata"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"n": 9}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {}}},
            "response_format.json_schema.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.[0].type"),
        ({"tools": [WEATHER, WEATHER]}, "tools.[1].function.name"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_schema", "json_schema": SCHEMA},
            },
            "response_format",
        ),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.[0].role"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages.[0].content",
        ),
        ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages.[0].tool_call_id"),
    ],
)
def test_a_parameter_that_cannot_be_honoured_is_a_400_naming_it(
    api_server, sdk, arguments: dict[str, Any], param: str
) -> None:
    request = {"model": "ft:any:run_x", "messages": MESSAGES, **arguments}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api_server).chat.completions.create(**request)
    assert refused.value.param == param, refused.value.message
    assert refused.value.message


def test_stream_options_without_a_stream_and_with_one(api_server, sdk) -> None:
    client = sdk(api_server)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="ft:any:run_x",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True, "include_obfuscation": True},
        )
    assert refused.value.param == "stream_options.include_obfuscation"
    # Accepted parameters reach the model lookup: an unknown model is a 404 naming it.
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="ft:any:run_x",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,
            n=2,
            tools=[WEATHER],
            tool_choice="auto",
            response_format={"type": "json_object"},
            user="someone",
            store=False,
        )
    assert missing.value.param == "model"
