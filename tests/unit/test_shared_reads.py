"""SharedReads: one query per question per broadcast generation, never a stale answer."""

from __future__ import annotations

import threading

from tunery.api.streams import SharedReads


def test_streams_at_one_generation_share_one_answer() -> None:
    shared = SharedReads()
    calls: list[str] = []
    barrier = threading.Barrier(8)
    answers: list[object] = []

    def stream() -> None:
        barrier.wait()
        answers.append(shared.get(3, ("run", "r1", 10), lambda: calls.append("read") or [1]))

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["read"]
    assert answers == [[1]] * 8


def test_a_new_generation_asks_again_and_an_old_one_is_not_cached() -> None:
    shared = SharedReads()
    assert shared.get(1, "q", lambda: "first") == "first"
    assert shared.get(1, "q", lambda: "unused") == "first"
    assert shared.get(2, "q", lambda: "after a commit") == "after a commit"
    # A stream that saw an older generation reads for itself and leaves the cache alone.
    assert shared.get(1, "q", lambda: "late reader") == "late reader"
    assert shared.get(2, "q", lambda: "unused") == "after a commit"
    assert shared.get(2, "other", lambda: "another question") == "another question"
