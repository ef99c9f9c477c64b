"""scripts/check_imports.py: the package's import graph has no cycles and follows the layer order,
and the check does fail on a package that breaks either rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO

SCRIPT = REPO / "scripts" / "check_imports.py"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_package_has_no_cycles_and_no_upward_imports() -> None:
    proc = _check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("adalfl: ") and proc.stdout.rstrip().endswith("no cycles, no upward imports")


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_an_upward_import_and_an_unplaced_unit_are_reported(tmp_path: Path) -> None:
    _write(
        tmp_path / "adalfl",
        {
            "__init__.py": "",
            "config.py": "def schemas():\n    from adalfl.methods import ce\n",  # upward, inside a function
            "methods/__init__.py": "",
            "methods/ce.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .base import Method\n",
            "methods/base.py": "from adalfl.methods.ce import CrossEntropy\n",
            "methods/checks.py": "from adalfl import config\n",  # with config.py's import: units in a cycle
            "extras/__init__.py": "",
        },
    )
    proc = _check(str(tmp_path / "adalfl"))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert "cycle between modules adalfl.methods.base, adalfl.methods.ce:" in lines
    assert "  adalfl.methods.ce -> adalfl.methods.base  (adalfl/methods/ce.py:3)" in lines  # type-only, relative
    assert "  adalfl.methods.base -> adalfl.methods.ce  (adalfl/methods/base.py:1)" in lines
    assert "cycle between units config, methods:" in lines
    upward = [line for line in lines if line.startswith("upward import: config (layer ")]
    assert len(upward) == 1 and upward[0].endswith("adalfl.config -> adalfl.methods.ce  (adalfl/config.py:2)")
    assert " -> methods (layer " in upward[0]
    assert any(line.startswith("unit extras is in no layer") for line in lines)
    assert lines[-1].endswith("4 problem(s)")
