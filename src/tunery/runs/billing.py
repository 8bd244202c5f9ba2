"""What a run costs: training time only, from the attempt records.

Queued, waiting for a node, retry back-off and loading are free: an attempt's billable time
runs from its first gradient step (``training_started_at``) to its end. A cancelled run is
billed for whole minutes only, rounded down.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tunery.db import Attempt


def billable_seconds(attempts: Iterable[Attempt], at: float) -> float:
    total = 0.0
    for attempt in attempts:
        if attempt.training_started_at is None:
            continue
        end = attempt.ended_at if attempt.ended_at is not None else at
        total += max(0.0, end - attempt.training_started_at)
    return total


def credits_for(seconds: float, credits_per_minute: float, *, whole_minutes: bool) -> float:
    minutes = math.floor(seconds / 60) if whole_minutes else seconds / 60
    return round(minutes * credits_per_minute, 4)
