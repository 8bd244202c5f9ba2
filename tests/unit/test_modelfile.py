"""The Ollama Modelfile: TEMPLATE derived from chat templates, stops, quoting, install scripts.

The Go side is checked for real: tests/gotemplate/render.go executes a TEMPLATE with Go's
text/template the way Ollama does, and its output must equal the Jinja rendering (without
BOS) for every conversation the Jinja template accepts.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunery.catalog import demo
from tunery.gguf.modelfile import (
    TemplateNotSupported,
    install_ps1,
    install_sh,
    ollama_model_name,
    ollama_template,
    render_modelfile,
    stop_tokens,
)
from tunery.pipeline.load import DEFAULT_CHAT_TEMPLATE

Message = tuple[str, str]
Conversation = list[Message]

# --- chat templates as published (tool and date logic left out where noted) -----------------

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Llama 3.1 without tools: a system header always, with the knowledge and (fixed) date lines.
LLAMA31 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: 26 Jul 2024\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""  # noqa: E501  (a published template, kept as it is)

# Qwen2.5-Instruct without the tools branch.
QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501  (a published template, kept as it is)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Gemma 3 (text only): the system prompt is folded into the first user turn.
GEMMA3 = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# SmolLM2-Instruct: ChatML with a default system prompt. Its BOS token is <|im_start|>, which
# the tokenizer never adds (the GGUF's add_bos_token is false), so no BOS is stripped.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# name: (chat template, the BOS token the tokenizer adds itself or None, end of text)
TEMPLATES: dict[str, tuple[str, str | None, str]] = {
    "chatml-demo": (demo.CHAT_TEMPLATE, demo.BOS, demo.EOS),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.1": (LLAMA31, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2.5": (QWEN25, None, "<|im_end|>"),
    "mistral": (MISTRAL, "<s>", "</s>"),
    "gemma": (GEMMA, "<bos>", "<eos>"),
    "gemma3": (GEMMA3, "<bos>", "<eos>"),
    "phi3": (PHI3, "<s>", "<|endoftext|>"),
    "tunery-default": (DEFAULT_CHAT_TEMPLATE, "<s>", "</s>"),
    "llama2": (LLAMA2, "<s>", "</s>"),
    "smollm2": (SMOLLM2, None, "<|im_end|>"),
}


# --- the Jinja side, as transformers renders it --------------------------------------------


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@functools.cache
def compiled(name: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise
    return environment.from_string(TEMPLATES[name][0])


def jinja_render(name: str, conversation: Conversation) -> str | None:
    """The Jinja rendering Ollama should reproduce (BOS stripped); None if refused."""
    _, bos, eos = TEMPLATES[name]
    try:
        text = compiled(name).render(
            messages=[{"role": role, "content": content} for role, content in conversation],
            add_generation_prompt=conversation[-1][0] != "assistant",
            bos_token=bos or "",
            eos_token=eos,
        )
    except jinja2.TemplateError:
        return None
    return text.removeprefix(bos) if bos else text


def all_role_sequences(max_length: int) -> list[tuple[str, ...]]:
    """Every sequence of roles without two equal neighbours (Ollama merges those)."""
    return [
        roles
        for length in range(1, max_length + 1)
        for roles in itertools.product(("system", "user", "assistant"), repeat=length)
        if all(a != b for a, b in itertools.pairwise(roles))
    ]


CONTENT_SETS: list[Callable[[str, int], str]] = [
    lambda role, i: f"Hi, this is {role} message {i}.",
    lambda role, i: f'Ünïcode ✓ 👋 "quotes" \\back {{{{ .Content }}}} {{% raw %}} <{role}> {i}',
    lambda role, i: f"first line {i}\nsecond line\n\nthird line of the {role}",
]


def conversations() -> list[Conversation]:
    return [
        [(role, make(role, i)) for i, role in enumerate(roles)]
        for roles in all_role_sequences(5)
        for make in CONTENT_SETS
    ]


# The ``go_render`` fixture (tests/conftest.py) executes a TEMPLATE as Ollama does.
GoRender = Callable[[str, Sequence[Conversation]], list[str]]


@pytest.mark.parametrize("name", TEMPLATES)
def test_ollama_renders_every_conversation_as_the_chat_template_does(
    name: str, go_render: GoRender
) -> None:
    chat_template, bos, eos = TEMPLATES[name]
    template = ollama_template(chat_template, bos_token=bos, eos_token=eos)

    compared: list[Conversation] = []
    expected: list[str] = []
    for conversation in conversations():
        text = jinja_render(name, conversation)
        # Conversations the template refuses or renders without some message are undefined.
        if text is None or not all(content in text for _, content in conversation):
            continue
        compared.append(conversation)
        expected.append(text)
    assert len(compared) >= 15
    assert any(len(conversation) >= 4 for conversation in compared)

    for conversation, want, got in zip(
        compared, expected, go_render(template, compared), strict=True
    ):
        assert got == want, f"{name}: {[role for role, _ in conversation]}"


def test_chatml_template_reads_like_ollamas_own() -> None:
    template = ollama_template(demo.CHAT_TEMPLATE, bos_token=demo.BOS, eos_token=demo.EOS)
    assert template == (
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        '{{- if eq .Role "user" }}<|im_start|>user\n'
        "{{ .Content }}<|im_end|>\n"
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
        "{{ .Content }}<|im_end|>\n"
        '{{ else if eq .Role "system" }}<|im_start|>system\n'
        "{{ .Content }}<|im_end|>\n"
        "{{ end }}\n"
        '{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant\n'
        "{{ end }}\n"
        "{{- end }}"
    )
    assert demo.BOS not in template


def test_qwen_default_system_prompt_only_without_a_system_message(go_render: GoRender) -> None:
    template = ollama_template(QWEN25, bos_token=None, eos_token="<|im_end|>")
    without, with_system = go_render(
        template, [[("user", "Hi")], [("system", "Be brief."), ("user", "Hi")]]
    )
    assert without == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert with_system == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_phi3_closes_a_final_assistant_turn_with_the_eos(go_render: GoRender) -> None:
    template = ollama_template(PHI3, bos_token="<s>", eos_token="<|endoftext|>")
    (text,) = go_render(template, [[("user", "Hi"), ("assistant", "Hello")]])
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>"


def test_system_folded_into_the_first_user_turn(go_render: GoRender) -> None:
    template = ollama_template(GEMMA3, bos_token="<bos>", eos_token="<eos>")
    (text,) = go_render(template, [[("system", "Be brief."), ("user", "Hi")]])
    assert text == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_template_without_a_system_role_leaves_system_messages_out(go_render: GoRender) -> None:
    template = ollama_template(MISTRAL, bos_token="<s>", eos_token="</s>")
    (text,) = go_render(template, [[("system", "ignored"), ("user", "Hi")]])
    assert text == "[INST] Hi [/INST]"


def test_padded_content_is_kept_exactly_by_templates_that_keep_it(go_render: GoRender) -> None:
    conversation = [("system", " sys \n"), ("user", "\n hi  "), ("assistant", "  yo\n\n")]
    template = ollama_template(QWEN25, bos_token=None, eos_token="<|im_end|>")
    assert go_render(template, [conversation]) == [jinja_render("qwen2.5", conversation)]


def test_trimming_templates_match_on_stripped_content(go_render: GoRender) -> None:
    padded = [("user", "\n hi  "), ("assistant", "  yo\n\n"), ("user", " again ")]
    stripped = [(role, content.strip()) for role, content in padded]
    template = ollama_template(LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    # Go cannot trim; on content without surrounding whitespace the two agree exactly.
    assert go_render(template, [stripped]) == [jinja_render("llama3", padded)]


def test_literal_braces_and_triple_quotes_survive(go_render: GoRender) -> None:
    chat_template = (
        "{% for message in messages %}{{ '{{' + message['role'] + '}} \"\"\"{' }}"
        "{{ message['content'] }}{{ '{' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '{{assistant}} {{{' }}{% endif %}"
    )
    template = ollama_template(chat_template, bos_token=None, eos_token="</s>")
    assert '"""' not in template
    conversation = [("user", "a"), ("assistant", "b"), ("user", "c")]
    assert go_render(template, [conversation]) == [
        '{{user}} """{a{{{assistant}} """{b{{{user}} """{c{{{assistant}} {{{'
    ]


def test_generation_blocks_and_dates_render_as_in_transformers(go_render: GoRender) -> None:
    chat_template = (
        "{{ '[SYS]Today is ' + strftime_now('%Y-%m-%d') + '[/SYS]' }}"
        "{% for m in messages %}{% if m.role == 'assistant' %}"
        "{% generation %}{{ '<|im_start|>assistant\n' + m.content + '<|im_end|>\n' }}"
        "{% endgeneration %}{% else %}"
        "{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    before = datetime.date.today().isoformat()
    template = ollama_template(chat_template, bos_token=None, eos_token="<|im_end|>")
    today = {before, datetime.date.today().isoformat()}
    (text,) = go_render(template, [[("user", "Hi"), ("assistant", "Hello")]])
    assert text in {
        f"[SYS]Today is {day}[/SYS]<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
        for day in today
    }


# --- templates that cannot be expressed --------------------------------------------------------


@pytest.mark.parametrize(
    ("chat_template", "reason"),
    [
        pytest.param(
            "{% for m in messages %}{{ m.role }}: {{ m.content }}"
            "{% if m.content | length > 40 %} (long){% endif %}\n{% endfor %}",
            "depends on message contents",
            id="content-length",
        ),
        pytest.param(
            "{% for m in messages %}{{ m.role }}: {{ m.content | lower }}\n{% endfor %}",
            "leaves out message content",
            id="content-rewritten",
        ),
        pytest.param(
            "{% for m in messages %}{% if m.role == 'assistant' and loop.last %}"
            "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m.content + '<|im_end|>\n' }}"
            "{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
            "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
            "differs between",
            id="last-turn-special",
        ),
        pytest.param(
            "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
            "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}"
            "{% endif %}{% for m in loop_messages %}{% if m.role == 'user' %}"
            "{% if loop.last and sys is defined %}{{ '[INST] ' + sys + '\n\n' + m.content }}"
            "{% else %}{{ '[INST] ' + m.content }}{% endif %}{{ '[/INST]' }}"
            "{% else %}{{ ' ' + m.content + eos_token }}{% endif %}{% endfor %}",
            "moves or repeats message content",
            id="system-in-last-user-turn",
        ),
        pytest.param("{% for m in messages %}", "does not parse", id="syntax-error"),
        pytest.param(
            "{{ raise_exception('no chat here') }}", "fails on a user conversation", id="refuses"
        ),
    ],
)
def test_inexpressible_templates_are_refused(chat_template: str, reason: str) -> None:
    with pytest.raises(TemplateNotSupported, match=reason) as caught:
        ollama_template(chat_template, bos_token="<s>", eos_token="</s>")
    assert caught.value.code == "template_not_supported"


# --- stops, Modelfile, names, scripts ------------------------------------------------------------


def test_stop_tokens_unique_in_order() -> None:
    assert stop_tokens("<|im_end|>", "<|end_of_text|>") == ["<|im_end|>", "<|end_of_text|>"]
    assert stop_tokens("</s>", "</s>") == ["</s>"]
    assert stop_tokens("", "</s>") == ["</s>"]


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """A port of Ollama's Modelfile parser (parser.ParseFile), without MESSAGE.

    Values are unquoted verbatim (no escape sequences); a quoted value ends at the first
    line break where the text so far, trimmed, is a complete quoted string.
    """

    def unquote(value: str) -> tuple[str, bool]:
        if value.startswith('"""'):
            complete = len(value) >= 6 and value.endswith('"""')
            return (value[3:-3], True) if complete else ("", False)
        if value.startswith('"'):
            complete = len(value) >= 2 and value.endswith('"')
            return (value[1:-1], True) if complete else ("", False)
        return value, True

    commands: list[tuple[str, str]] = []
    state, name, buffer = "nil", "", ""
    for char in text:
        if state == "nil":
            if char == "#":
                state = "comment"
            elif char not in " \t\r\n":
                state, buffer = "name", char
        elif state == "comment":
            if char in "\r\n":
                state = "nil"
        elif state in ("name", "parameter"):
            parameter_char = state == "parameter" and (char.isalnum() or char == "_")
            if char.isascii() and (char.isalpha() or parameter_char):
                buffer += char
                continue
            assert char in " \t", f"bad command character {char!r}"
            word = buffer.lower() if state == "name" else buffer
            if state == "name" and word == "parameter":
                state, buffer = "parameter", ""
                continue
            name = {"from": "model"}.get(word, word)
            state, buffer = "value", ""
        elif char in " \t\r\n":
            value, complete = unquote(buffer.strip())
            if not complete or char in " \t":
                buffer += char
                continue
            commands.append((name, value))
            state, buffer = "nil", ""
        elif char.isprintable():
            buffer += char
    if state == "value":
        value, complete = unquote(buffer.strip())
        assert complete, "unterminated value"
        commands.append((name, value))
    return commands


def test_modelfile_round_trips_through_ollamas_parser() -> None:
    template = ollama_template(QWEN25, bos_token=None, eos_token="<|im_end|>")
    text = render_modelfile(
        gguf_file="model.gguf",
        template=template,
        stops=["<|im_end|>", 'say "stop" \\ now', " [/INST]"],
        system='Be "helpful".\nTwo lines.',
        num_ctx=4096,
    )
    assert text.startswith('FROM ./model.gguf\nTEMPLATE """{{- range')
    assert parse_modelfile(text) == [
        ("model", "./model.gguf"),
        ("template", template),
        ("system", 'Be "helpful".\nTwo lines.'),
        ("stop", "<|im_end|>"),
        ("stop", 'say "stop" \\ now'),
        ("stop", " [/INST]"),
        ("num_ctx", "4096"),
    ]


def test_modelfile_template_with_triple_quotes() -> None:
    template = '{{ .Content }} """quoted""" text\nnext line\n'
    text = render_modelfile(gguf_file="model.gguf", template=template, stops=["</s>"])
    assert ("template", template) in parse_modelfile(text)
    with pytest.raises(ValueError, match="triple quotes"):
        # A line ending in a quote would end a plain-quoted value early.
        render_modelfile(gguf_file="m.gguf", template='a """ "b"\nc', stops=[])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"stops": ["a\nb"]}, "cannot be written"),
        ({"stops": [""]}, "cannot be written"),
        ({"template": "bell \a"}, "cannot carry"),
        ({"gguf_file": "../model.gguf"}, "file name"),
        ({"num_ctx": 0}, "positive integer"),
    ],
)
def test_modelfile_rejects_values_it_cannot_carry(arguments: dict, message: str) -> None:
    values = {"gguf_file": "model.gguf", "template": "{{ .Prompt }}", "stops": ["</s>"]}
    with pytest.raises(ValueError, match=message):
        render_modelfile(**{**values, **arguments})


@pytest.mark.parametrize(
    ("run_name", "expected"),
    [
        ("My Run #3", "my-run-3"),
        ("support-bot_v2.1", "support-bot_v2.1"),
        ("..weird..name..", "weird.name"),
        ("Ünïcode Ärger", "n-code-rger"),
        ("///", "tunery-model"),
        ("x" * 100, "x" * 64),
    ],
)
def test_ollama_model_name(run_name: str, expected: str) -> None:
    assert ollama_model_name(run_name) == expected
    assert ollama_model_name(expected) == expected


def test_install_scripts_name_the_model_and_explain_a_missing_ollama() -> None:
    for script in (install_sh("My Run"), install_ps1("My Run")):
        assert "ollama create my-run -f Modelfile" in script
        assert "https://ollama.com/download" in script
        assert "llama-cli -m model.gguf -cnv" in script
        assert "My Run" not in script


def test_install_sh_is_valid_shell(tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    script.write_text(install_sh("demo"))
    for shell in ("bash", "sh"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(script)], check=True)


def test_install_sh_without_ollama_exits_non_zero(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "install.sh").write_text(install_sh("demo"))
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    for tool in ("dirname",):
        (empty_path / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(
        [shutil.which("sh") or "/bin/sh", str(bundle / "install.sh")],
        env={"PATH": str(empty_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "https://ollama.com/download" in done.stderr
    assert "llama-cli -m model.gguf -cnv" in done.stderr


def test_install_sh_runs_ollama_create_next_to_the_modelfile(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "install.sh").write_text(install_sh("demo"))
    tools = tmp_path / "bin"
    tools.mkdir()
    record = tmp_path / "calls"
    fake = tools / "ollama"
    fake.write_text(f'#!/bin/sh\necho "$(pwd) $*" >> "{record}"\n')
    fake.chmod(0o755)
    done = subprocess.run(
        ["sh", str(bundle / "install.sh")],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert record.read_text() == f"{bundle} create demo -f Modelfile\n"
    assert "ollama run demo" in done.stdout
