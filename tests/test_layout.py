"""The package's shape: a layered import graph (import-linter's contract in pyproject.toml), no
private name used across modules, and an ``__all__`` in every module."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "eggs_ptp"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def lint_imports(tmp_path: Path, change: str | None = None) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` with this checkout's contract on a copy of the package, ``change``
    appended to its ``pattern`` module."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "eggs_ptp", ignore=shutil.ignore_patterns("__pycache__"))
    if change:
        with open(copy / "eggs_ptp" / "pattern.py", "a", encoding="utf-8") as module:
            module.write(f"\n{change}\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(linter), "--config", str(tmp_path / "pyproject.toml"), "--no-cache"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_its_layers(tmp_path):
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    result = lint_imports(tmp_path, "import eggs_ptp.cli  # a cycle: pattern is imported by everything")
    assert result.returncode == 1
    assert "eggs_ptp.pattern is not allowed to import eggs_ptp.cli" in result.stdout


def private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("eggs_ptp"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if any(part.startswith("_") for part in a.name.split(".")[1:])]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_a_module(path):
    assert private_imports(path) == []


def test_the_private_import_check_finds_one(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from eggs_ptp.selectors.eggs import _HIDDEN, EggsSelector\nimport eggs_ptp._secret\n")
    assert private_imports(module) == ["eggs_ptp.selectors.eggs._HIDDEN", "eggs_ptp._secret"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_declares_its_public_names(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert any(
        isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
        for node in tree.body
    ), f"{path.relative_to(PACKAGE)} has no __all__"
