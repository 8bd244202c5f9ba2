"""Conversations as the model sees them: rendered with its chat template, then tokenised.

Training, the smoke-test samples and the GGUF export all render through here, so a prompt
reads the same everywhere. The conversation is rendered once (in transformers' sandboxed
Jinja environment) with each message's content replaced by a private-use marker, so every
content's character span is exact; the whole string is then tokenised as inference tokenises
a prompt. Targets are the next token where the model should learn and ``IGNORE`` elsewhere:
by default only assistant content and the end-of-turn token that closes it, so the model
learns both what to say and when to stop. Text that looks like a special token inside a
message stays plain text. Needs a tokenizer, never torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunery.pipeline.datasets import Message, Row

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
"""The target of a position nothing is trained on (cross-entropy's ignore index)."""


@dataclass(frozen=True)
class Example:
    """One tokenised row: ``targets[i]`` is the token to predict after ``input_ids[i]``."""

    input_ids: list[int]
    targets: list[int]

    @property
    def tokens(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for target in self.targets if target != IGNORE)


@dataclass(frozen=True)
class PairExample:
    """One tokenised preference pair: the prompt with the better answer, and with the worse.

    Each side's targets are its answer's tokens only; ``index`` is the pair's position in its
    list (training or validation), which keys its reference log-probabilities.
    """

    index: int
    chosen: Example
    rejected: Example

    @property
    def tokens(self) -> int:
        return self.chosen.tokens + self.rejected.tokens

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens


def sequences(items: list[Example] | list[PairExample]) -> Iterator[Example]:
    """The tokenised sequences of ``items``: each example, or both sides of each pair."""
    for item in items:
        if isinstance(item, PairExample):
            yield item.chosen
            yield item.rejected
        else:
            yield item


@dataclass(frozen=True)
class SamplePrompt:
    """A smoke-test prompt: the conversation up to the reply, and the reply the data holds."""

    messages: tuple[Message, ...]
    expected: str | None


class TemplateFailure(Exception):
    """The chat template refused a conversation (it raised while rendering)."""


class Encoder:
    """Renders rows with the chat template and tokenises them with trained spans marked."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        end_of_turn: str,
        *,
        train_on_inputs: bool,
    ) -> None:
        self.tokenizer = tokenizer
        self.end_of_turn = end_of_turn
        self.train_on_inputs = train_on_inputs
        self.special_ids = set(tokenizer.all_special_ids) | {
            token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special
        }
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.bos_id = (
            tokenizer.bos_token_id if probe and probe[0] == tokenizer.bos_token_id else None
        )

    def encode(self, row: Row) -> Example:
        if row.text is not None:
            return self._encode_text(row.text)
        text, spans = render_with_spans(self.tokenizer, row.messages)
        ids, offsets = self._tokenize(text, spans)
        trained = [] if self.train_on_inputs else self._trained_spans(text, row.messages, spans)
        labels = []
        for token_id, (start, _) in zip(ids, offsets, strict=True):
            inside = self.train_on_inputs or any(lo <= start < hi for lo, hi in trained)
            labels.append(token_id if inside else IGNORE)
        # targets[i] is what position i predicts: the next token's label.
        return Example(ids, [*labels[1:], IGNORE])

    def prompt_ids(self, messages: tuple[Message, ...]) -> list[int]:
        """Token ids of ``messages`` followed by the template's generation prompt."""
        text, spans = render_with_spans(self.tokenizer, messages, add_generation_prompt=True)
        return self._tokenize(text, spans)[0]

    def _encode_text(self, text: str) -> Example:
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if self.bos_id is not None:
            ids = [self.bos_id, *ids]
        ids = [*ids, self.tokenizer.eos_token_id]
        return Example(ids, [*ids[1:], IGNORE])

    def _tokenize(
        self, text: str, spans: list[tuple[int, int]]
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets, tokenised as inference would tokenise ``text``.

        If a special token turns up inside message content (someone typed ``<|im_end|>``),
        the text is tokenised piecewise instead: template parts with special tokens, content
        with special tokens split into plain text.
        """
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        smuggled = any(
            token_id in self.special_ids and any(lo <= start < hi for lo, hi in spans)
            for token_id, (start, _) in zip(ids, offsets, strict=True)
        )
        if not smuggled:
            return ids, offsets
        ids, offsets = [], []
        cursor = 0
        for lo, hi in [*spans, (len(text), len(text))]:
            for start, end, plain in ((cursor, lo, False), (lo, hi, True)):
                if start >= end:
                    continue
                piece = self.tokenizer(
                    text[start:end],
                    add_special_tokens=False,
                    return_offsets_mapping=True,
                    split_special_tokens=plain,
                )
                ids.extend(piece["input_ids"])
                offsets.extend((start + a, start + b) for a, b in piece["offset_mapping"])
            cursor = hi
        return ids, offsets

    def _trained_spans(
        self, text: str, messages: tuple[Message, ...], spans: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Character spans to train on: each trained assistant reply plus its end-of-turn."""
        trained = []
        for index, (message, (lo, hi)) in enumerate(zip(messages, spans, strict=True)):
            if message.role != "assistant" or not message.trained or lo == hi:
                continue
            limit = spans[index + 1][0] if index + 1 < len(spans) else len(text)
            closing = text.find(self.end_of_turn, hi, limit) if self.end_of_turn else -1
            trained.append((lo, closing + len(self.end_of_turn) if closing >= 0 else hi))
        return trained


def render_with_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: tuple[Message, ...],
    *,
    add_generation_prompt: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` with the chat template; returns the text and each message's span.

    Each content is first replaced by a private-use marker, so the spans are exact even when
    a template trims or repeats text around it. A message the template leaves out gets an
    empty span at the end.
    """
    markers = [f"\ue000{index}\ue001" for index in range(len(messages))]
    try:
        rendered: str = tokenizer.apply_chat_template(  # type: ignore[assignment]
            [
                {"role": m.role, "content": marker}
                for m, marker in zip(messages, markers, strict=True)
            ],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as error:  # Jinja raises its own types, and templates call raise_exception
        raise TemplateFailure(f"the chat template rejects this conversation: {error}") from None
    pieces: list[str] = []
    spans: list[tuple[int, int]] = [(-1, -1)] * len(messages)
    cursor = 0
    length = 0
    while True:
        start = rendered.find("\ue000", cursor)
        if start < 0:
            pieces.append(rendered[cursor:])
            break
        end = rendered.index("\ue001", start)
        index = int(rendered[start + 1 : end])
        pieces.append(rendered[cursor:start])
        length += len(pieces[-1])
        content = messages[index].content
        spans[index] = (length, length + len(content))
        pieces.append(content)
        length += len(content)
        cursor = end + 1
    text = "".join(pieces)
    return text, [span if span[0] >= 0 else (len(text), len(text)) for span in spans]
