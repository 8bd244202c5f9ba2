"""The import rules of docs/architecture.md, checked on every import in ``src/``.

Imports inside ``if TYPE_CHECKING:`` are annotations only (every module has
``from __future__ import annotations``) and are not counted; every other import is, at
module level or inside a function alike, so a circle cannot hide in a function body.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src"
LEAVES = {
    "tunery",
    "tunery.errors",
    "tunery.phases",
    "tunery.lifecycle",
    "tunery.event_kinds",
    "tunery.environment",
    "tunery.tiers",
    "tunery.settings",
    "tunery.catalog",
}
LAYERS: tuple[tuple[str, ...], ...] = (
    tuple(sorted(LEAVES)),
    ("tunery.pipeline", "tunery.gguf"),
    ("tunery.wire",),
    ("tunery.worker",),
    ("tunery.db", "tunery.migrations"),
    ("tunery.hub", "tunery.backends"),
    ("tunery.runs",),
    ("tunery.scheduler", "tunery.openai_api", "tunery.webhooks", "tunery.serving"),
    ("tunery.api", "tunery.server"),
    ("tunery.cli",),
)
"""Bottom to top: a module imports from its own layer or below, never above."""
CONTROL_PLANE = (
    "tunery.api",
    "tunery.backends",
    "tunery.db",
    "tunery.hub",
    "tunery.migrations",
    "tunery.runs",
    "tunery.scheduler",
    "tunery.server",
    "tunery.webhooks",
)
PIPELINE = ("tunery.pipeline", "tunery.gguf")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def imports_of(path: Path) -> set[str]:
    """The tunery modules ``path`` imports, ``from package import module`` resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotations_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            submodules = (f"{node.module}.{alias.name}" for alias in node.names)
            names.update(name for name in submodules if _is_module(name))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name == "tunery" or name.startswith("tunery.")}


def _is_module(name: str) -> bool:
    path = SOURCE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def within(name: str, packages: tuple[str, ...] | set[str]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


MODULES = {module_name(path): imports_of(path) for path in SOURCE.rglob("*.py")}


def layer_of(module: str) -> int:
    for rank, packages in enumerate(LAYERS):
        if module in packages or within(module, tuple(p for p in packages if p != "tunery")):
            return rank
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def import_circles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    graph = {m: {n for n in names if n in MODULES and n != m} for m, names in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for name in graph[module]:
            if name not in index:
                visit(name)
                low[module] = min(low[module], low[name])
            elif name in on_stack:
                low[module] = min(low[module], index[name])
        if low[module] == index[module]:
            group = []
            while True:
                name = stack.pop()
                on_stack.discard(name)
                group.append(name)
                if name == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_module_takes_part_in_an_import_circle() -> None:
    assert import_circles() == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_its_own(module: str) -> None:
    rank = layer_of(module)
    above = {name for name in MODULES[module] if name in MODULES and layer_of(name) > rank}
    assert not above, f"{module} (layer {rank}) imports {above}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, PIPELINE)))
def test_the_pipeline_imports_nothing_from_the_control_plane_or_the_faces(module: str) -> None:
    forbidden = (*CONTROL_PLANE, "tunery.cli", "tunery.wire", "tunery.worker")
    assert not {name for name in MODULES[module] if within(name, forbidden)}


@pytest.mark.parametrize("module", sorted(LEAVES - {"tunery", "tunery.catalog"}))
def test_leaves_import_only_leaves(module: str) -> None:
    assert MODULES[module] <= LEAVES


def test_wire_formats_import_no_control_plane_module_but_the_lifecycle() -> None:
    for module in (m for m in MODULES if within(m, ("tunery.wire",))):
        outside = {
            name
            for name in MODULES[module]
            if within(name, CONTROL_PLANE) and name != "tunery.lifecycle"
        }
        assert not outside, f"{module} imports {outside}"


def test_routes_hold_no_sql() -> None:
    for path in (SOURCE / "tunery" / "api" / "routes").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "sqlalchemy" not in text and "session." not in text, path.name


def test_the_control_plane_and_the_cli_import_without_torch() -> None:
    code = (
        "import sys, tunery.api.app, tunery.cli.main, tunery.scheduler.scheduler; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
