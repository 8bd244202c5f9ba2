"""What a serving host makes of generated text: stop strings, and tool calls read from a
free answer (``tool_choice: auto``). The generation itself runs in tests/openai/test_chat.py
against a real model."""

from __future__ import annotations

import json
from typing import Any

from tunery.openai_api.chat import parse_request
from tunery.serving.generate import _Answer, _tool_calls

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def request(**fields: Any) -> Any:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(body, context_tokens=2048).generation([])


def answer_of(text: str, finish_reason: str = "stop") -> _Answer:
    answer = _Answer(stops=[])
    answer.add(1, text, None)
    answer.finish_reason = finish_reason
    return answer


def calls(text: str, **fields: Any) -> list[tuple[str, dict[str, Any]]]:
    found = _tool_calls(answer_of(text), request(tools=[WEATHER, TIME], **fields))
    return [(call["function"]["name"], json.loads(call["function"]["arguments"])) for call in found]


def test_a_free_answer_that_is_a_call_is_read_as_one() -> None:
    tagged = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert calls(tagged) == [("get_weather", {"city": "Oslo"})]
    bare = '  {"name": "get_time", "parameters": {}}\n'
    assert calls(bare) == [("get_time", {})]
    as_text = (
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>'
    )
    assert calls(as_text) == [("get_weather", {"city": "Rome"})]
    two = tagged + "\n" + '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert [name for name, _ in calls(two)] == ["get_weather", "get_time"]
    assert [name for name, _ in calls(two, parallel_tool_calls=False)] == ["get_weather"]


def test_anything_else_stays_text() -> None:
    for text in (
        "The weather in Oslo is mild.",
        '{"name": "get_stock", "arguments": {}}',  # not a tool it was given
        '{"city": "Oslo"}',
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call> and <tool_call>x',
    ):
        assert calls(text) == [], text
    # A call cut off by max_tokens is not a call, nor is one when tools are declined.
    cut = answer_of('{"name": "get_time", "arguments": {}}', finish_reason="length")
    assert _tool_calls(cut, request(tools=[TIME])) == []
    declined = answer_of('{"name": "get_time", "arguments": {}}')
    assert _tool_calls(declined, request(tools=[TIME], tool_choice="none")) == []


def test_stop_strings_are_cut_and_held_back_while_they_may_be_one() -> None:
    answer = _Answer(stops=["<|end|>", "STOP"])
    answer.add(1, "Hello <|e", None)
    assert answer.settled() == len("Hello ")  # "<|e" may begin "<|end|>"
    answer.add(2, "Hello <|ex", None)
    assert answer.settled() == len("Hello <|ex")
    answer.add(3, "Hello <|ex and STOP there", None)
    assert (answer.text, answer.finish_reason) == ("Hello <|ex and ", "stop")
    # Every token kept some text; one a stop string took entirely would not count.
    assert [answer.kept(index) for index in range(3)] == [True, True, True]
