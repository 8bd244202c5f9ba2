"""Micro-batches packed without padding, and their summed loss.

With a variable-length attention kernel a micro-batch becomes one row with the examples'
boundaries passed to the kernel; otherwise as few rows as possible, with position ids
restarting at every example, which transformers turns into a block-diagonal mask (see
``tunery.pipeline.attention``). Either way examples never see each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunery.pipeline.chat import IGNORE, Example

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from tunery.pipeline.attention import AttentionKind
    from tunery.pipeline.loss import LossKind


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor  # [rows, length], restarting at each example
    targets: torch.Tensor  # [rows, length], IGNORE where nothing is trained
    real_tokens: int
    attention_inputs: dict[str, Any] = field(default_factory=dict)  # where examples start
    sequence_ids: torch.Tensor | None = None
    """[rows, length]: which example of the packed list each position belongs to (its index
    there), -1 on padding. Set when ``pack`` is asked to (``with_sequence_ids``)."""

    def forward_inputs(self) -> dict[str, Any]:
        """The model-forward keywords for this batch (the attention's included)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            **self.attention_inputs,
        }


def pack(
    batch: list[Example],
    pad_id: int,
    device: torch.device,
    attention: AttentionKind = "sdpa",
    *,
    with_sequence_ids: bool = False,
) -> PackedBatch:
    """Pack ``batch`` for ``attention``: one flattened row for variable-length kernels, else
    first-fit-decreasing rows whose tails are padded as their own segment (attending only to
    themselves, never trained). ``with_sequence_ids``: also say where each example went."""
    import torch

    from tunery.pipeline.attention import FLATTENED, attention_inputs

    if attention in FLATTENED:
        rows = [list(range(len(batch)))]
        fill = [sum(len(example.input_ids) for example in batch)]
    else:
        rows, fill = _first_fit_rows(batch)
    width = max(fill)
    ids, positions, targets, sequences = [], [], [], []
    for row, used in zip(rows, fill, strict=True):
        row_ids: list[int] = []
        row_positions: list[int] = []
        row_targets: list[int] = []
        row_sequences: list[int] = []
        for index in row:
            example = batch[index]
            row_ids.extend(example.input_ids)
            row_positions.extend(range(len(example.input_ids)))
            row_targets.extend(example.targets)
            row_sequences.extend([index] * len(example.input_ids))
        tail = width - used
        row_ids.extend([pad_id] * tail)
        row_positions.extend(range(tail))
        row_targets.extend([IGNORE] * tail)
        row_sequences.extend([-1] * tail)
        ids.append(row_ids)
        positions.append(row_positions)
        targets.append(row_targets)
        sequences.append(row_sequences)

    def tensor(values: list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    lengths = tuple(len(batch[index].input_ids) for index in rows[0])
    extra = attention_inputs(attention, lengths, device) if attention in FLATTENED else {}
    return PackedBatch(
        tensor(ids),
        tensor(positions),
        tensor(targets),
        sum(fill),
        extra,
        tensor(sequences) if with_sequence_ids else None,
    )


def _first_fit_rows(batch: list[Example]) -> tuple[list[list[int]], list[int]]:
    """Rows of example indices, and the tokens each row holds."""
    # Rows as long as the longest example: masked attention computes the whole row (masked
    # pairs included), so shorter rows cost fewer attention pairs for the same tokens.
    capacity = max(len(example.input_ids) for example in batch)
    rows: list[list[int]] = []
    fill: list[int] = []
    order = sorted(range(len(batch)), key=lambda index: len(batch[index].input_ids), reverse=True)
    for index in order:
        size = len(batch[index].input_ids)
        for row, used in enumerate(fill):
            if used + size <= capacity:
                rows[row].append(index)
                fill[row] += size
                break
        else:
            rows.append([index])
            fill.append(size)
    return rows, fill


def batch_loss_sum(model: PeftModel, batch: PackedBatch, loss: LossKind = "logits") -> torch.Tensor:
    """Summed cross-entropy over trained targets; logits only where a target is trained.

    The model must already use the attention ``batch`` was packed for (``attention_in_use``).
    """
    return batch_loss_and_hits(model, batch, loss)[0]


def batch_loss_and_hits(
    model: PeftModel, batch: PackedBatch, loss: LossKind = "logits"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``batch_loss_sum`` and the trained targets predicted exactly (None where the loss
    keeps no logits: ``loss.trained_loss_and_hits``)."""
    from tunery.pipeline.loss import trained_loss_and_hits

    return trained_loss_and_hits(loss, model, batch.forward_inputs(), batch.targets)
