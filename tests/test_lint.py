"""The lint rules and the type check hold on the whole tree (configured in pyproject.toml).

``ruff check`` runs on the repository ([tool.ruff]: a few seconds) and mypy on ``seqattn_core`` and
``pipelines`` ([tool.mypy]: about a minute on a cold cache). Both are dev dependencies (``make
setup``); without them the tests skip, except under CI (``CI=true``), where a missing tool fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.datasets import in_ci

REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    """The tool's executable: beside this Python (the venv), else on PATH; skip (fail in CI) without it."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        if in_ci():
            pytest.fail(f"{name} is not installed (it is a dev dependency: make setup)")
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]'); CI runs this check")
    return found


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ruff() -> None:
    done = run([tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."], timeout=120)
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout}{done.stderr}"


@pytest.mark.slow
def test_mypy() -> None:
    # The cache lives in the user's cache folder (not the tree): a second run takes seconds.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seqattn-mypy"
    done = run([tool("mypy"), "--cache-dir", str(cache), "seqattn_core", "pipelines"], timeout=600)
    assert done.returncode == 0, f"mypy found problems:\n{done.stdout}{done.stderr}"
