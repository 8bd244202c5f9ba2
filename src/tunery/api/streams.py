"""Shared reads for event streams.

Every commit wakes every open stream, and streams that follow the same run (or account)
and are caught up all ask the same question: the events after the same id. ``SharedReads``
answers each question once per broadcast generation, encoded once, so fifty watchers of
one run cost one query instead of fifty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

Answer = TypeVar("Answer")


class SharedReads:
    """Answers keyed by (generation, question); older generations are dropped.

    A stream passes the generation it saw *before* reading. Any commit after that bumps the
    generation and wakes the stream again, so an answer computed at or after that point is
    never stale for it. Computing under the lock keeps two streams from running the same
    query at once; the queries are short.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._answers: dict[Hashable, object] = {}

    def get(self, generation: int, question: Hashable, compute: Callable[[], Answer]) -> Answer:
        with self._lock:
            if generation > self._generation:
                self._generation, self._answers = generation, {}
            if generation == self._generation and question in self._answers:
                return self._answers[question]  # type: ignore[return-value]
            answer = compute()
            if generation == self._generation:
                self._answers[question] = answer
            return answer
