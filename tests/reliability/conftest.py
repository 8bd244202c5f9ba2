"""The reliability suite: attacks a hostile tenant, a careless user and a flaky machine try.

Every test under ``tests/reliability`` is marked ``reliability`` (excluded from a plain
``pytest``; ``make reliability`` or CI's ``-m ""`` runs it). Tests count what they tried in
the session's ``figures``: per area, attacks tried, refused correctly, crashes (a 5xx, a
dropped connection, an exception other than the documented refusal) and data lost (a run or
an event gone, a charge counted twice). The session writes them to ``build/reliability.json``,
which docs/reliability.md publishes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tunery.backends.fake import FakeBackend
from tunery.db import Account
from tunery.runs.plane import ControlPlane
from tunery.settings import NodeSettings, Settings
from tunery.tiers import TierSettings

HERE = Path(__file__).resolve().parent
FIGURES_FILE = HERE.parent.parent / "build" / "reliability.json"
ACCOUNTS = ("a", "b")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.reliability)


@dataclass
class Tally:
    tried: int = 0
    refused_correctly: int = 0
    crashes: int = 0
    data_lost: int = 0


class Figures:
    """What the suite tried, by area, and what it measured (memory, latency: figures, not
    pass/fail bounds); written to ``FIGURES_FILE`` when the session ends."""

    def __init__(self) -> None:
        self.areas: dict[str, Tally] = defaultdict(Tally)
        self.measured: dict[str, float] = {}

    def measure(self, name: str, value: float) -> None:
        """A measured figure (the worst seen, if measured more than once)."""
        self.measured[name] = round(max(value, self.measured.get(name, value)), 3)

    def attack(self, area: str, *, refused: bool, crashed: bool = False, lost: int = 0) -> None:
        """One attack: ``refused`` if the server answered as documented."""
        tally = self.areas[area]
        tally.tried += 1
        tally.refused_correctly += refused and not crashed
        tally.crashes += crashed
        tally.data_lost += lost

    def answer(self, area: str, response: httpx.Response | None, expected: Iterable[int]) -> None:
        """An HTTP attack: ``response`` None means the connection dropped (a crash)."""
        if response is None:
            self.attack(area, refused=False, crashed=True)
            return
        self.attack(
            area,
            refused=response.status_code in set(expected),
            crashed=response.status_code >= 500,
        )

    def as_dict(self) -> dict[str, object]:
        areas = {name: asdict(tally) for name, tally in sorted(self.areas.items())}
        totals = Tally()
        for tally in self.areas.values():
            totals.tried += tally.tried
            totals.refused_correctly += tally.refused_correctly
            totals.crashes += tally.crashes
            totals.data_lost += tally.data_lost
        return {
            "totals": asdict(totals),
            "areas": areas,
            "measured": dict(sorted(self.measured.items())),
        }


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    figures = Figures()
    yield figures
    if figures.areas or figures.measured:
        FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
        FIGURES_FILE.write_text(json.dumps(figures.as_dict(), indent=2) + "\n")


@pytest.fixture
def make_plane(tmp_path: Path) -> Iterator[Callable[..., ControlPlane]]:
    """``make_plane(**settings)``: a control plane on a fresh data dir with the in-memory
    backend (one CPU node at 1 credit/min, no back-off) and two accounts, ``a`` and ``b``."""
    planes: list[ControlPlane] = []

    def make(**overrides: Any) -> ControlPlane:
        settings = Settings(
            data_dir=tmp_path / f"data-{len(planes)}",
            tiers=[TierSettings(id="cpu", name="CPU", credits_per_minute=1.0)],
            nodes=[NodeSettings(name="n0", tier="cpu")],
            retry_backoff_seconds=0,
            **overrides,
        )
        plane = ControlPlane.open(settings, backend=FakeBackend.for_settings(settings))
        planes.append(plane)
        with plane.sessions.begin() as session:
            for account in ACCOUNTS:
                session.add(Account(id=account, name=account))
        return plane

    yield make
    for plane in planes:
        plane.close()
