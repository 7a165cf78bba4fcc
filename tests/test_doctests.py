"""Every ``>>>`` example in the packages runs and gives what it shows.

Found by reading the files (a module with no ``>>>`` is not imported here); each module's examples
run as ``doctest.testmod`` would, one test per module. Examples written as ``Example::`` blocks
without ``>>>`` are prose for the reader and are not run.
"""

from __future__ import annotations

import doctest
import importlib
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("seqattn_core", "pipelines", "services", "bench")


def modules_with_examples() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if ">>>" in path.read_text():
                parts = path.relative_to(REPO).with_suffix("").parts
                out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


MODULES = modules_with_examples()


def test_the_examples_are_found() -> None:
    """The scan sees the modules it must (a scan that found none would pass on anything)."""
    assert {"seqattn_core.attention", "seqattn_core.lem", "seqattn_core.selector", "pipelines.registry",
            "services.selector_api.store"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # an example's mkdtemp() lands here
    monkeypatch.chdir(tmp_path)  # and anything it writes to a relative path
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, report=True)
    assert result.attempted > 0, f"{name}: no example ran"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"
