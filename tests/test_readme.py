"""The README's quick start, run as written: its shell block, in a fresh folder, must select the
planted features and crosses and nothing else."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"

pytestmark = pytest.mark.slow


def shell_block(markdown: Path, heading: str) -> str:
    """The first fenced ``bash`` block after ``heading`` in ``markdown``."""
    text = markdown.read_text()
    start = text.index(heading)
    match = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no bash block under {heading!r} in {markdown.name}"
    return match.group(1)


def run_block(block: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run a documented shell block in ``cwd`` beside a link to the project's ``.venv``."""
    if not (VENV / "bin" / "seqattn").exists():
        pytest.skip("needs the project's .venv (make setup)")
    (cwd / ".venv").symlink_to(VENV)
    env = {**os.environ, "SEQATTN_HOME": str(cwd / ".seqattn")}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_quick_start_keeps_the_planted_features_and_no_noise(tmp_path: Path) -> None:
    out = run_block(shell_block(REPO / "README.md", "## Select features for a recommender model"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    truth = json.loads((tmp_path / "data" / "synth" / "truth.json").read_text())
    fs = json.loads((tmp_path / "fs.json").read_text())
    kept = {f["name"] for f in fs["features"]}
    removed = set((fs.get("latency") or {}).get("removed_features", []))
    assert not kept & set(truth["irrelevant"]), kept
    # Every planted feature that fits is kept (one of a feature and its exact duplicate is enough).
    (dup, original), = truth["duplicate_of"].items()
    as_original = {original if k == dup else k for k in kept | removed}
    assert set(truth["relevant_alone"]) <= as_original, kept
    limit = fs["spec"]["constraints"]["max_embedding_mb"]
    assert limit is None or fs["metrics"]["embedding_mb"] <= limit
    crosses = {frozenset(c["features"]) for c in fs["crosses"]}
    crosses |= {frozenset(p) for p in (fs.get("latency") or {}).get("removed_crosses", [])}
    assert crosses == {frozenset(p) for p in truth["pairs"]}
