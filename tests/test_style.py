"""The code base stays ruff-clean (lint and format)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (it comes with the 'test' extra)")
    return [exe]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    result = subprocess.run([*_ruff(), *args, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
PACKAGES = ("commlib", "collectives", "transport", "datatypes", "tests")


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def oversized(paths: list[Path]) -> list[str]:
    """Modules over :data:`MAX_MODULE_LINES` lines and functions over :data:`MAX_FUNCTION_LINES`, as text."""
    import ast

    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(path.parents[1])}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(path.parents[1])}:{node.lineno} {node.name}: {length} lines")
    return found


def test_modules_and_functions_stay_short():
    """A module reads in one sitting: at most 400 lines, and no function over 80."""
    assert oversized(_modules()) == []


def test_the_size_check_finds_long_modules_and_functions(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    body = "".join(f"    y = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (package / "func.py").write_text(f"def f():\n{body}")
    assert oversized([package / "long.py", package / "func.py"]) == [
        f"pkg/long.py: {MAX_MODULE_LINES + 1} lines",
        f"pkg/func.py:1 f: {MAX_FUNCTION_LINES + 1} lines",
    ]
