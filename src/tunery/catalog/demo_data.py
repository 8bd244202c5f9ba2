"""The demo dataset: small, deterministic chat rows with the length spread of real data.

Rows come from a handful of tasks a tiny model can learn (capitals, arithmetic, counting,
reversing lists, spelling), with and without system turns and over several turns. Counting
and reversing make some rows ten times longer than others, which is what makes padding
expensive in real chat data. ``examples/demo-dataset.jsonl`` is ``demo_rows()`` written out;
the demo tokenizer is trained on the same text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Sweden": "Stockholm",
    "Norway": "Oslo",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Ireland": "Dublin",
    "Hungary": "Budapest",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Australia": "Canberra",
    "Turkey": "Ankara",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Morocco": "Rabat",
    "Ghana": "Accra",
    "Cuba": "Havana",
    "Iceland": "Reykjavik",
    "Belgium": "Brussels",
    "Nepal": "Kathmandu",
    "Colombia": "Bogota",
}
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "silver",
    "forest",
    "candle",
    "button",
    "rocket",
    "pencil",
    "orange",
    "harbor",
    "meadow",
    "lantern",
    "castle",
    "dragon",
    "pepper",
    "violin",
]
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one line.",
    "You answer questions about geography, numbers and words.",
)
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]


def _capital(rng: random.Random) -> tuple[str, str]:
    country, capital = rng.choice(sorted(CAPITALS.items()))
    question = rng.choice(
        (f"What is the capital of {country}?", f"Which city is the capital of {country}?")
    )
    return question, f"The capital of {country} is {capital}."


def _addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


def _counting(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(1, 40)
    end = start + rng.choice((3, 5, 8, 12, 20, 35, 60))
    numbers = ", ".join(str(n) for n in range(start, end + 1))
    return f"Count from {start} to {end}.", f"{numbers}."


def _reverse(rng: random.Random) -> tuple[str, str]:
    items = [rng.choice(WORDS) for _ in range(rng.choice((3, 4, 6, 10, 16)))]
    return (
        f"Reverse this list: {', '.join(items)}",
        f"Reversed: {', '.join(reversed(items))}",
    )


def _spelling(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Spell the word {word}.", f"{word} is spelled {'-'.join(word.upper())}."


def _how_many(rng: random.Random) -> tuple[str, str]:
    count = rng.randint(1, 10)
    word = rng.choice(WORDS)
    things = " ".join([word] * count)
    return (
        f"How many words are in this text: {things}",
        f"There are {NUMBER_WORDS[count]} words.",
    )


TASKS = (_capital, _addition, _counting, _reverse, _spelling, _how_many)


def demo_rows(count: int = 400, seed: int = 7) -> Iterator[dict]:
    """Yield ``count`` rows in OpenAI chat format, the same ones for the same seed."""
    rng = random.Random(seed)
    for _ in range(count):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        turns = 2 if rng.random() < 0.15 else 1
        for _ in range(turns):
            question, answer = rng.choice(TASKS)(rng)
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        yield {"messages": messages}


def write_demo_dataset(path: Path, count: int = 400) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for row in demo_rows(count):
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


GENERAL_TEXT = """
A tiny model learns the shape of its data before it learns the facts. Training shows it a
question and the answer an assistant should give, again and again, until the loss falls.
The learning rate sets how far each step moves the weights; the batch size sets how many
examples share a step. When the loss stops falling, more steps waste time and money.
Rivers run from mountains to the sea. Forests grow slowly, and cities grow quickly. People
write letters, build bridges, paint pictures, sing songs, and read books about history,
science, music, travel, cooking, weather, animals and stars. Every morning the bakery opens
its doors; every evening the lights of the harbor come on one by one.
"""


def demo_corpus() -> Iterator[str]:
    """Plain text the demo tokenizer is trained on: the demo rows and some general prose."""
    yield from GENERAL_TEXT.split("\n")
    for row in demo_rows(2000, seed=11):
        for message in row["messages"]:
            yield message["content"]


def pretraining_text() -> Iterator[str]:
    """What the demo base model is pretrained on: questions and answers as plain prose."""
    yield GENERAL_TEXT
    for row in demo_rows(1500, seed=13):
        yield "\n".join(message["content"] for message in row["messages"])
