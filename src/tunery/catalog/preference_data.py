"""The demo preference task: the demo questions, each with a better and a worse answer.

Both answers are right; the better one opens with a friendly "Sure!" (``PREFERRED_OPENING``),
the worse one does not. A model tuned with DPO on these pairs should open its answers that
way on questions it never saw, which is easy to check on generated text
(``follows_preferred_style``). ``examples/demo-preferences.jsonl`` is ``preference_rows()``
written out in OpenAI's preference format.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from tunery.catalog.demo_data import SYSTEM_PROMPTS, TASKS

PREFERRED_OPENING = "Sure! "


def preference_rows(count: int = 300, seed: int = 17) -> Iterator[dict]:
    """Yield ``count`` pairs in OpenAI's preference format, the same ones for the same seed."""
    rng = random.Random(seed)
    for _ in range(count):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        question, answer = rng.choice(TASKS)(rng)
        messages.append({"role": "user", "content": question})
        yield {
            "input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": PREFERRED_OPENING + answer}],
            "non_preferred_output": [{"role": "assistant", "content": answer}],
        }


def follows_preferred_style(answer: str) -> bool:
    """Whether a generated answer opens as the preferred answers do."""
    return answer.strip().startswith(PREFERRED_OPENING.strip())


def write_preference_dataset(path: Path, count: int = 300) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for row in preference_rows(count):
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
