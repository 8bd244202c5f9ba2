"""The Ollama side of a GGUF export: Modelfile, TEMPLATE and install scripts.

``ollama create`` recognises a chat template only if it is one of Ollama's own; anything
else gets ``{{ .Prompt }}``, and the model never stops. So the Modelfile always carries an
explicit ``TEMPLATE``: a Go text/template over ``.Messages`` that renders conversations the
way the model's Hugging Face (Jinja) chat template does, without the BOS token where the
tokenizer adds one (llama.cpp then adds it itself; ``bos_token`` is None otherwise).

No Jinja-to-Go translator exists, so the structure is found by probing: the Jinja template
is rendered (sandboxed, as transformers does) for many role sequences with marker contents,
and the text around the markers gives what comes before the first message, between two
messages and after the last. That structure is written as a Go template, and then checked
by rendering conversations with real contents both ways. A template whose output depends on
message contents, or on positions in ways the structure cannot express, raises
``TemplateNotSupported`` instead of producing a template that is wrong.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunery.errors import TuneryError
from tunery.pipeline.datasets import ROLES

# A conversation must render with these role sequences, or no Ollama template is possible.
REQUIRED_SHAPES = (("user",), ("user", "assistant"), ("user", "assistant", "user"))
_LAUNCH_HINT = "llama-cli -m model.gguf -cnv"


class TemplateNotSupported(TuneryError):
    """The chat template cannot be written as an Ollama TEMPLATE; the message says why."""

    code = "template_not_supported"

    def __init__(self, reason: str) -> None:
        # The reason reads on from "cannot write an Ollama TEMPLATE for this chat template: ".
        super().__init__(
            reason,
            hint="the GGUF itself still works with llama.cpp, which reads the chat template "
            "from the file; for Ollama, write the Modelfile's TEMPLATE by hand",
        )


# --- rendering the Jinja template -------------------------------------------------------


class _GenerationTag(Extension):
    """Accepts transformers' ``{% generation %}`` blocks and renders their body unchanged."""

    tags = {"generation"}  # noqa: RUF012  (jinja2's Extension declares tags a plain set)

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' tojson: no HTML escaping, non-ASCII kept by default.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


Conversation = Sequence[tuple[str, str]]


class _RenderFailed(Exception):
    """The Jinja template raised for one conversation (often on purpose: role checks)."""


class _JinjaChat:
    """The Hugging Face chat template, rendered the way transformers renders it."""

    def __init__(self, chat_template: str, *, bos_token: str | None, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, "jinja2.ext.loopcontrols"],
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        # One clock reading for all probes: a date in the template (Mistral's, Llama's
        # "Today Date") is then the same in every rendering, and written into the TEMPLATE.
        now = datetime.datetime.now()
        environment.globals["strftime_now"] = now.strftime
        try:
            self._template = environment.from_string(chat_template)
        except jinja2.TemplateSyntaxError as error:
            raise TemplateNotSupported(f"the chat template does not parse: {error}") from None
        self._bos = bos_token or ""
        self._eos = eos_token

    def render(self, conversation: Conversation, *, add_generation_prompt: bool) -> str:
        """The rendered text without its leading BOS; raises _RenderFailed."""
        messages = [{"role": role, "content": content} for role, content in conversation]
        try:
            text = self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        # Chat templates come from model repositories; any error in one (a raise_exception
        # role check, a TypeError on an unexpected value) means "cannot render this".
        except Exception as error:
            raise _RenderFailed(str(error) or type(error).__name__) from None
        if self._bos and text.startswith(self._bos):
            text = text[len(self._bos) :]
        return text

    def render_for_ollama(self, conversation: Conversation) -> str:
        """Ollama's contract: a generation prompt follows unless the last turn is the model's."""
        return self.render(conversation, add_generation_prompt=conversation[-1][0] != "assistant")


# --- the structure: the text around each message ----------------------------------------

# Templates often treat a system message at index 0 apart (they pull it out of the loop),
# so it counts as a role of its own here.
FIRST_SYSTEM = "system0"
# ("first", role): before a first message; ("between", previous, role); ("last", role).
Slot = tuple[str, ...]


def _kinds(roles: Sequence[str]) -> list[str]:
    """Roles, with a system message at index 0 as FIRST_SYSTEM."""
    return [
        FIRST_SYSTEM if index == 0 and role == "system" else role
        for index, role in enumerate(roles)
    ]


def _slots(roles: Sequence[str]) -> list[Slot]:
    """The n + 1 slots of a conversation with these roles, in order."""
    kinds = _kinds(roles)
    slots: list[Slot] = [("first", kinds[0])]
    slots += [("between", previous, kind) for previous, kind in itertools.pairwise(kinds)]
    slots.append(("last", kinds[-1]))
    return slots


class _Layout(Protocol):
    """A structure that both renders frames (to check in Python) and writes a Go template."""

    def frame(self, slot: Slot) -> str: ...

    def go_template(self) -> str: ...


def _render_layout(layout: _Layout, conversation: Conversation) -> str:
    frames = [layout.frame(slot) for slot in _slots([role for role, _ in conversation])]
    pieces = [frames[0]]
    for (_, content), frame in zip(conversation, frames[1:], strict=True):
        pieces += [content, frame]
    return "".join(pieces)


_LAST = "{{- $last := eq (len (slice $.Messages $i)) 1 }}"


@dataclass(frozen=True)
class _Turns:
    """Each role wraps its content in a prefix and a suffix (the form Ollama's own use).

    ``prefix`` and ``suffix`` are keyed by role, and by FIRST_SYSTEM for a system message
    at index 0 (Llama 3.1 adds its date lines there). ``default_system`` is written before
    the first message when it is not a system message (Qwen2.5's "You are Qwen...").
    After the last message comes ``generation`` (the assistant header), or ``closing`` if
    the last is the model's (Phi-3 ends with its EOS).
    """

    prefix: dict[str, str]
    suffix: dict[str, str]
    default_system: str
    generation: str
    closing: str

    def frame(self, slot: Slot) -> str:
        kind, *roles = slot
        if kind == "first":
            (role,) = roles
            head = "" if role == FIRST_SYSTEM else self.default_system
            return head + self.prefix[role]
        if kind == "between":
            previous, role = roles
            return self.suffix[previous] + self.prefix[role]
        (role,) = roles
        return self.suffix[role] + (self.closing if role == "assistant" else self.generation)

    def go_template(self) -> str:
        lines = ["{{- range $i, $_ := .Messages }}"]
        if self.generation or self.closing:
            lines.append(_LAST)
        if self.default_system:
            lines.append(
                '{{- if and (eq $i 0) (ne .Role "system") }}'
                + _go_text(self.default_system)
                + "{{ end }}"
            )
        branches = [
            (f'eq .Role "{role}"', self._wrap(role, role)) for role in ("user", "assistant")
        ]
        if "system" in self.prefix:
            branches.append(('eq .Role "system"', self._wrap(FIRST_SYSTEM, "system")))
        lines.append("{{- " + _go_if_chain(branches).removeprefix("{{ "))
        if self.generation and self.closing:
            lines.append(
                "{{- if $last }}"
                + _go_choice('eq .Role "assistant"', self.closing, self.generation)
                + "{{ end }}"
            )
        elif self.generation:
            lines.append(
                '{{- if and $last (ne .Role "assistant") }}'
                + _go_text(self.generation)
                + "{{ end }}"
            )
        elif self.closing:
            lines.append(
                '{{- if and $last (eq .Role "assistant") }}' + _go_text(self.closing) + "{{ end }}"
            )
        lines.append("{{- end }}")
        return "\n".join(lines)

    def _wrap(self, first: str, later: str) -> str:
        """A message's content in its prefix and suffix; ``first`` applies at index 0."""
        prefix = _go_choice("eq $i 0", self.prefix[first], self.prefix[later])
        suffix = _go_choice("eq $i 0", self.suffix[first], self.suffix[later])
        if self.prefix[first] == self.prefix[later] or self.suffix[first] == self.suffix[later]:
            return prefix + "{{ .Content }}" + suffix
        return (
            "{{ if eq $i 0 }}"
            + _go_text(self.prefix[first])
            + "{{ .Content }}"
            + _go_text(self.suffix[first])
            + "{{ else }}"
            + _go_text(self.prefix[later])
            + "{{ .Content }}"
            + _go_text(self.suffix[later])
            + "{{ end }}"
        )


@dataclass(frozen=True)
class _Pairs:
    """The text between each pair of roles, written out as is (Gemma 3, Llama 2).

    Needed when a template joins two messages in a way no per-role prefix and suffix can
    express, e.g. a system prompt folded into the first user turn.
    """

    table: dict[Slot, str]

    def frame(self, slot: Slot) -> str:
        return self.table.get(slot, "")

    def go_template(self) -> str:
        kinds = ("user", "assistant", FIRST_SYSTEM, "system")
        conditions = {
            "user": 'eq .Role "user"',
            "assistant": 'eq .Role "assistant"',
            FIRST_SYSTEM: 'and (eq .Role "system") (eq $i 0)',
            "system": 'eq .Role "system"',
        }
        lines = ['{{- $prev := "" }}', "{{- range $i, $_ := .Messages }}"]
        if any(slot[0] == "last" and text for slot, text in self.table.items()):
            lines.append(_LAST)
        branches = []
        for kind in kinds:
            if not any(slot[-1] == kind for slot in self.table):
                continue
            if kind == FIRST_SYSTEM:
                body = _go_text(self.frame(("first", kind))) + "{{ .Content }}"
                body += _go_if_chain([("$last", _go_text(self.frame(("last", kind))))])
                branches.append((conditions[kind], body))
                continue
            before = [("eq $i 0", _go_text(self.frame(("first", kind))))]
            before += [
                (f'eq $prev "{previous}"', _go_text(self.frame(("between", previous, kind))))
                for previous in kinds
                if previous != kind
            ]
            after = [("$last", _go_text(self.frame(("last", kind))))]
            body = _go_if_chain(before) + "{{ .Content }}" + _go_if_chain(after)
            branches.append((conditions[kind], body))
        lines.append("{{- " + _go_if_chain(branches).removeprefix("{{ "))
        if any(FIRST_SYSTEM in slot[1:] for slot in self.table):
            lines.append(
                f'{{{{- if {conditions[FIRST_SYSTEM]} }}}}{{{{ $prev = "{FIRST_SYSTEM}" }}}}'
                "{{ else }}{{ $prev = .Role }}{{ end }}"
            )
        else:
            lines.append("{{- $prev = .Role }}")
        lines.append("{{- end }}")
        return "\n".join(lines)


# --- writing Go template text ------------------------------------------------------------
# Literal text always sits between "}}" and "{{" without trim markers, so it is reproduced
# byte for byte; the layout newlines of the generated template sit only before "{{-".

_GO_SPECIAL = re.compile(r'\{\{|"""|\{\Z')


def _go_text(text: str) -> str:
    """``text`` as literal Go template text: ``{{`` (and a final ``{``) go through actions.

    Triple quotes are broken up too, so the template fits in a Modelfile's triple quotes.
    """

    def escape(match: re.Match[str]) -> str:
        found = match.group()
        if found == '"""':
            return '""{{ "\\"" }}'
        return "{{ " + json.dumps(found) + " }}"

    return _GO_SPECIAL.sub(escape, text)


def _go_if_chain(branches: Iterable[tuple[str, str]]) -> str:
    """``{{ if A }}a{{ else if B }}b{{ end }}`` over the branches (Go snippets) not empty."""
    kept = [(condition, text) for condition, text in branches if text]
    if not kept:
        return ""
    parts = []
    for index, (condition, text) in enumerate(kept):
        keyword = "if" if index == 0 else "else if"
        parts.append(f"{{{{ {keyword} {condition} }}}}{text}")
    return "".join(parts) + "{{ end }}"


def _go_choice(condition: str, when_true: str, when_false: str) -> str:
    """Literal ``when_true`` or ``when_false`` text, by ``condition``."""
    if when_true == when_false:
        return _go_text(when_true)
    if not when_false:
        return f"{{{{ if {condition} }}}}{_go_text(when_true)}{{{{ end }}}}"
    if not when_true:
        return f"{{{{ if not ({condition}) }}}}{_go_text(when_false)}{{{{ end }}}}"
    return (
        f"{{{{ if {condition} }}}}{_go_text(when_true)}"
        f"{{{{ else }}}}{_go_text(when_false)}{{{{ end }}}}"
    )


# --- probing ------------------------------------------------------------------------------


def _shapes() -> list[tuple[str, ...]]:
    """Role sequences to probe: all up to four messages, two longer conversations.

    Consecutive messages never share a role: Ollama merges them before templating.
    """
    shapes = [
        roles
        for length in range(1, 5)
        for roles in itertools.product(ROLES, repeat=length)
        if all(a != b for a, b in itertools.pairwise(roles))
    ]
    shapes.sort(key=lambda roles: (len(roles), [ROLES.index(role) for role in roles]))
    shapes += [
        ("system", "user", "assistant", "user", "assistant", "user"),
        ("user", "assistant") * 3,
    ]
    return shapes


def _describe(roles: Sequence[str]) -> str:
    return " → ".join(roles)


def _marker(index: int) -> str:
    # No whitespace (templates trim contents) and no marker is a prefix of another.
    return f"TUNERY{index}PROBE"


@dataclass
class _Probed:
    """What the marker probes showed: slot texts, renderable shapes, suffix hints."""

    table: dict[Slot, str]
    shapes: list[tuple[str, ...]]
    # The text after a last non-assistant message without a generation prompt: its suffix
    # (plus any closing text). Only a hint for splitting texts into prefix and suffix.
    bare_last: dict[str, str]


def _probe(chat: _JinjaChat) -> _Probed:
    table: dict[Slot, str] = {}
    seen_in: dict[Slot, tuple[str, ...]] = {}
    shapes = []
    bare_last: dict[str, str] = {}
    for roles in _shapes():
        conversation = [(role, _marker(index)) for index, role in enumerate(roles)]
        try:
            text = chat.render_for_ollama(conversation)
        except _RenderFailed as error:
            if roles in REQUIRED_SHAPES:
                raise TemplateNotSupported(
                    f"it fails on a {_describe(roles)} conversation: {error}"
                ) from None
            continue  # the template refuses this role sequence (e.g. no system role)
        frames = _split(text, [content for _, content in conversation], roles)
        if frames is None:
            if roles in REQUIRED_SHAPES:
                raise TemplateNotSupported(
                    f"it leaves out message content in a {_describe(roles)} conversation"
                )
            continue  # the template drops a message here (e.g. a lone system prompt)
        for slot, frame in zip(_slots(roles), frames, strict=True):
            if slot in table and table[slot] != frame:
                raise TemplateNotSupported(
                    f"the text {_describe_slot(slot)} differs between the "
                    f"{_describe(seen_in[slot])} and {_describe(roles)} conversations "
                    f"({table[slot]!r} vs {frame!r})"
                )
            table.setdefault(slot, frame)
            seen_in.setdefault(slot, roles)
        shapes.append(roles)
        if len(roles) <= 2 and roles[-1] != "assistant":
            try:
                bare = chat.render(conversation, add_generation_prompt=False)
            except _RenderFailed:
                continue
            bare_frames = _split(bare, [content for _, content in conversation], roles)
            if bare_frames is not None:
                bare_last.setdefault(_slots(roles)[-1][1], bare_frames[-1])
    return _Probed(table=table, shapes=shapes, bare_last=bare_last)


def _split(text: str, markers: Sequence[str], roles: Sequence[str]) -> list[str] | None:
    """The texts around the markers, in order; None if some marker is missing."""
    counts = [text.count(marker) for marker in markers]
    positions = [text.find(marker) for marker in markers if marker in text]
    if any(count > 1 for count in counts) or positions != sorted(positions):
        raise TemplateNotSupported(
            f"it moves or repeats message content in a {_describe(roles)} conversation, "
            f"rendering {text!r}"
        )
    if 0 in counts:
        return None
    frames = []
    start = 0
    for marker, position in zip(markers, positions, strict=True):
        frames.append(text[start:position])
        start = position + len(marker)
    frames.append(text[start:])
    return frames


def _describe_slot(slot: Slot) -> str:
    kind, *roles = slot
    if kind == "first":
        return f"before a first {roles[0]} message"
    if kind == "between":
        return f"between a {roles[0]} and a {roles[1]} message"
    return f"after a last {roles[0]} message"


# --- from slot texts to a layout ------------------------------------------------------------


def _layout(probed: _Probed) -> _Layout:
    """Per-role prefix/suffix if they reproduce every probed slot, else the slot table."""
    last_assistant = probed.table[("last", "assistant")]
    # Text the template writes only after a final assistant message, on top of its suffix
    # (Phi-3 appends the EOS). Several splits may fit; the natural one takes as closing the
    # longest text found nowhere else in the conversation ("<|endoftext|>", not "<|im_end|>").
    fits = [
        turns
        for size in range(len(last_assistant) + 1)
        if (turns := _factor(probed, last_assistant[len(last_assistant) - size :])) is not None
    ]
    elsewhere = [text for slot, text in probed.table.items() if slot[0] != "last"]
    natural = [
        turns
        for turns in fits
        if not turns.closing or not any(turns.closing in text for text in elsewhere)
    ]
    if natural:
        return max(natural, key=lambda turns: len(turns.closing))
    if fits:
        return fits[0]
    return _Pairs(dict(probed.table))


class _NoFit(Exception):
    """The slot texts do not split into per-role prefixes and suffixes this way."""


def _without_suffix(text: str | None, end: str) -> str:
    if text is None or not text.endswith(end):
        raise _NoFit
    return text[: len(text) - len(end)]


def _without_prefix(text: str | None, start: str) -> str:
    if text is None or not text.startswith(start):
        raise _NoFit
    return text[len(start) :]


def _first_fit(*attempts: Callable[[], str]) -> str:
    for attempt in attempts:
        try:
            return attempt()
        except _NoFit:
            continue
    raise _NoFit


def _factor(probed: _Probed, closing: str) -> _Turns | None:
    """Per-role texts that reproduce every probed slot, given the closing text; else None.

    A message's suffix is what follows it when nothing else does (no generation prompt);
    the text between two messages then splits into the first's suffix and the second's
    prefix, and the text before a first user message into a default system block and the
    user prefix.
    """
    table = probed.table
    try:
        suffix = {
            "assistant": _without_suffix(table[("last", "assistant")], closing),
            "user": _without_suffix(probed.bare_last.get("user"), closing),
        }
        prefix = {
            "user": _without_prefix(table[("between", "assistant", "user")], suffix["assistant"]),
            "assistant": _without_prefix(table[("between", "user", "assistant")], suffix["user"]),
        }
        generation = _without_prefix(table[("last", "user")], suffix["user"])
        default_system = _without_suffix(table[("first", "user")], prefix["user"])

        def fit_system(kind: str) -> None:
            suffix[kind] = _first_fit(
                lambda: _without_suffix(probed.bare_last.get(kind), closing),
                lambda: _without_suffix(table.get(("between", kind, "user")), prefix["user"]),
                lambda: _without_suffix(
                    table.get(("between", kind, "assistant")), prefix["assistant"]
                ),
                lambda: _without_suffix(table.get(("last", kind)), generation),
            )
            prefix[kind] = _first_fit(
                lambda: _without_prefix(table.get(("first", kind)), ""),
                lambda: _without_prefix(table.get(("between", "user", kind)), suffix["user"]),
                lambda: _without_prefix(
                    table.get(("between", "assistant", kind)), suffix["assistant"]
                ),
            )

        for kind in (FIRST_SYSTEM, "system"):
            if any(kind in slot[1:] for slot in table):
                fit_system(kind)
        # Where only a first system message renders, or only later ones (Gemma refuses a
        # first one), the other gets the same texts: the template defines nothing for it.
        for kind, other in ((FIRST_SYSTEM, "system"), ("system", FIRST_SYSTEM)):
            if kind not in prefix and other in prefix:
                prefix[kind], suffix[kind] = prefix[other], suffix[other]
    except _NoFit:
        return None
    turns = _Turns(
        prefix=prefix,
        suffix=suffix,
        default_system=default_system,
        generation=generation,
        closing=closing,
    )
    if all(turns.frame(slot) == text for slot, text in table.items()):
        return turns
    return None


# --- checking with real contents -------------------------------------------------------------

_CONTENTS: tuple[Callable[[str, int], str], ...] = (
    lambda role, index: f"A plain {role} message, number {index}.",
    lambda role, index: {
        "system": f'Rules {index}:\n- be "exact"\n- {{{{ not a tag }}}} {{% nor this %}}',
        "user": f"line one\n\nline two of message {index} </think> [INST] <tool_call>",
        "assistant": f"<think>reasoning {index}</think>\nAn answer\nover lines.",
    }[role],
    lambda role, index: f"  \n padded {role} {index}\t \n",
    lambda role, index: "" if role == "assistant" else f"{role[0].upper()}{index}",
)


def _verify(chat: _JinjaChat, layout: _Layout, shapes: Sequence[tuple[str, ...]]) -> None:
    """Render every probed shape with real contents both ways; raise on any difference.

    Where the Jinja template strips whitespace from a message's content (``| trim``, as
    Llama 3 and Gemma do) and Go cannot, a match with that content stripped is accepted:
    the two agree exactly on content without surrounding whitespace.
    """
    for roles in shapes:
        for make in _CONTENTS:
            conversation = [(role, make(role, index)) for index, role in enumerate(roles)]
            try:
                expected = chat.render_for_ollama(conversation)
            except _RenderFailed as error:
                raise TemplateNotSupported(
                    f"it renders a {_describe(roles)} conversation with marker contents but "
                    f"fails with real contents: {error}"
                ) from None
            if _matches(expected, layout, conversation):
                continue
            actual = _render_layout(layout, conversation)
            raise TemplateNotSupported(
                f"its output depends on message contents: for a {_describe(roles)} "
                f"conversation with contents {[content for _, content in conversation]!r} "
                f"it renders {_first_difference(expected, actual)}"
            )


def _matches(expected: str, layout: _Layout, conversation: Conversation) -> bool:
    frames = [layout.frame(slot) for slot in _slots([role for role, _ in conversation])]
    contents = [content for _, content in conversation]

    def match(index: int, position: int) -> bool:
        frame = frames[index]
        if not expected.startswith(frame, position):
            return False
        position += len(frame)
        if index == len(contents):
            return position == len(expected)
        content = contents[index]
        variants = dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip()))
        return any(
            expected.startswith(variant, position) and match(index + 1, position + len(variant))
            for variant in variants
        )

    return match(0, 0)


def _first_difference(expected: str, actual: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    start = max(0, at - 30)
    return (
        f"{expected[start : at + 30]!r} where the Ollama template would render "
        f"{actual[start : at + 30]!r} (from character {at})"
    )


# --- public API ------------------------------------------------------------------------------


def ollama_template(chat_template: str, *, bos_token: str | None, eos_token: str) -> str:
    """The Go TEMPLATE that renders conversations exactly as ``chat_template`` does.

    Contract: for every conversation of system/user/assistant messages that the Jinja
    template renders (with ``add_generation_prompt`` unless the last message is the
    assistant's), Ollama's rendering of ``.Messages`` equals the Jinja output without its
    leading ``bos_token``. Tolerated differences:

    - content the Jinja template strips (``| trim``) is not stripped in Go, so the two
      agree exactly on content without leading or trailing whitespace;
    - role sequences the Jinja template refuses (a system message for Gemma), or renders
      without one of the messages (Gemma 3 given only a system prompt), get a best-effort
      rendering; system messages are left out if the template has no system role at all;
    - a date the template takes from ``strftime_now`` is fixed at the time of the call.

    Tool calls and tool messages are not supported. Raises TemplateNotSupported, saying
    what differed, when the output depends on message contents or on positions in a way
    a per-role Go template cannot express (Qwen3's thinking blocks, DeepSeek-R1's
    reasoning stripping, a system prompt moved into the last user turn).
    """
    chat = _JinjaChat(chat_template, bos_token=bos_token, eos_token=eos_token)
    probed = _probe(chat)
    layout = _layout(probed)
    _verify(chat, layout, probed.shapes)
    return layout.go_template()


def stop_tokens(end_of_turn: str, eos_token: str) -> list[str]:
    """The strings Ollama should stop on: end of turn, then end of text; unique, non-empty."""
    return [token for token in dict.fromkeys((end_of_turn, eos_token)) if token]


_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def render_modelfile(
    *,
    gguf_file: str,
    template: str,
    stops: list[str],
    system: str | None = None,
    num_ctx: int | None = None,
) -> str:
    """A Modelfile for the GGUF file named ``gguf_file``, which lies next to it.

    Values are written so that Ollama's Modelfile parser reads them back exactly. That
    parser has no escape sequences: a quoted value is taken verbatim, so quotes and
    backslashes in stop strings are written as they are. Raises ValueError for a value no
    Modelfile can carry (characters the parser drops, a newline in a stop string).
    """
    if not _FILE_NAME.fullmatch(gguf_file):
        raise ValueError(f"gguf_file must be a file name next to the Modelfile: {gguf_file!r}")
    lines = [f"FROM ./{gguf_file}", f"TEMPLATE {_modelfile_text(template, 'template')}"]
    if system is not None:
        lines.append(f"SYSTEM {_modelfile_text(system, 'system')}")
    for stop in stops:
        lines.append(f"PARAMETER stop {_modelfile_stop(stop)}")
    if num_ctx is not None:
        if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx <= 0:
            raise ValueError(f"num_ctx must be a positive integer, not {num_ctx!r}")
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def _check_printable(text: str, what: str) -> None:
    # Ollama's parser silently drops runes Go does not consider printable (except the
    # whitespace it handles itself), which would change the value.
    dropped = sorted({char for char in text if not char.isprintable() and char not in "\t\n\r"})
    if dropped:
        raise ValueError(f"the {what} contains characters a Modelfile cannot carry: {dropped!r}")


def _modelfile_text(text: str, what: str) -> str:
    """``text`` quoted for a TEMPLATE or SYSTEM line.

    Triple quotes when the text has none; otherwise plain quotes, which the parser ends at
    the first line that (trailing whitespace aside) ends in a quote.
    """
    _check_printable(text, what)
    if '"""' not in text:
        return f'"""{text}"""'
    premature = any(
        ('"' + text[:index]).rstrip().endswith('"') and text[:index].strip()
        for index, char in enumerate(text)
        if char in "\n\r"
    )
    if text.startswith('""') or premature:
        raise ValueError(f"the {what} contains triple quotes where a Modelfile cannot hold them")
    return f'"{text}"'


def _modelfile_stop(stop: str) -> str:
    _check_printable(stop, "stop string")
    if not stop or "\n" in stop or "\r" in stop or stop.startswith('""'):
        raise ValueError(f"stop string {stop!r} cannot be written in a Modelfile")
    return f'"{stop}"'


_NAME_INVALID = re.compile(r"[^a-z0-9._-]+")


def ollama_model_name(run_name: str) -> str:
    """A valid Ollama model name from a run name: lowercase ``[a-z0-9._-]``, 1 to 64 chars.

    Other characters become ``-``; runs of dots collapse (Ollama rejects ``..``); it starts
    and ends with a letter or digit. Idempotent. An unusable name gives ``tunery-model``.
    """
    name = _NAME_INVALID.sub("-", run_name.lower())
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"-{2,}", "-", name)
    name = name.strip("._-")[:64].strip("._-")
    return name or "tunery-model"


def install_sh(model_name: str) -> str:
    """A POSIX shell script that runs ``ollama create`` with the Modelfile next to it.

    ``model_name`` is passed through ``ollama_model_name``. Without ``ollama`` on PATH the
    script says where to get it (or how to run the GGUF with llama.cpp) and exits 1.
    """
    name = ollama_model_name(model_name)
    return f"""#!/bin/sh
# Adds this model to Ollama as "{name}". Run: sh install.sh
set -eu
cd "$(dirname "$0")"
if ! command -v ollama >/dev/null 2>&1; then
    echo "Ollama is not installed (no 'ollama' command on PATH)." >&2
    echo "Install it from https://ollama.com/download and run this script again," >&2
    echo "or run the model with llama.cpp instead:  {_LAUNCH_HINT}" >&2
    exit 1
fi
ollama create {name} -f Modelfile
echo "Done. Chat with it:  ollama run {name}"
"""


def install_ps1(model_name: str) -> str:
    """The PowerShell counterpart of ``install_sh``, with the same behaviour."""
    name = ollama_model_name(model_name)
    return f"""# Adds this model to Ollama as "{name}".
# Run: powershell -ExecutionPolicy Bypass -File install.ps1
$ErrorActionPreference = 'Stop'
if (-not (Get-Command ollama -ErrorAction SilentlyContinue)) {{
    Write-Host "Ollama is not installed (no 'ollama' command on PATH)."
    Write-Host "Install it from https://ollama.com/download and run this script again,"
    Write-Host "or run the model with llama.cpp instead:  {_LAUNCH_HINT}"
    exit 1
}}
Push-Location -LiteralPath $PSScriptRoot
try {{
    & ollama create {name} -f Modelfile
    if ($LASTEXITCODE -ne 0) {{ exit $LASTEXITCODE }}
}} finally {{
    Pop-Location
}}
Write-Host "Done. Chat with it:  ollama run {name}"
"""
