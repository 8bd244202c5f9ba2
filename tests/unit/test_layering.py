"""The import rules of docs/architecture.md, checked on every import in ``src/``."""

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
    "tunery.environment",
    "tunery.tiers",
    "tunery.settings",
    "tunery.catalog",
}
CONTROL_PLANE = (
    "tunery.api",
    "tunery.backends",
    "tunery.db",
    "tunery.hub",
    "tunery.migrations",
    "tunery.runs",
    "tunery.scheduler",
    "tunery.server",
)
PIPELINE = ("tunery.pipeline", "tunery.gguf")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name == "tunery" or name.startswith("tunery.")}


def within(name: str, packages: tuple[str, ...] | set[str]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


MODULES = {module_name(path): imports_of(path) for path in SOURCE.rglob("*.py")}


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
            if within(name, CONTROL_PLANE) and name != "tunery.runs.lifecycle"
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
