"""The benchmarks import the project, and each other, by name, often inside functions that
only a full run reaches: every name they import must exist, or ``make bench-quick`` fails
minutes in."""

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SIBLINGS = {script.stem for script in BENCH.glob("*.py")}


def imported_names(script: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from tunery... import`` and every import from another
    benchmark script (they run with bench/ on their path)."""
    tree = ast.parse(script.read_text(), filename=str(script))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module
        and (node.module.startswith("tunery") or node.module in SIBLINGS)
        for alias in node.names
    ]


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_exists(script: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    missing = []
    for module_name, name in imported_names(script):
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            continue
        try:
            importlib.import_module(f"{module_name}.{name}")
        except ModuleNotFoundError:
            missing.append(f"{module_name}.{name}")
    assert not missing, f"{script.name} imports names that do not exist: {missing}"
