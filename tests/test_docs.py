"""The documentation, checked: every relative link in README.md and docs/*.md points at a file that
exists, and the schedule example of docs/jobspec.md runs as written and publishes a version."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.test_readme import REPO, run_block, shell_block

MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and <img src="target">; a target may carry a "#fragment".
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img[^>]*\bsrc=\"([^\"]+)\"")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def relative_links(markdown: Path) -> list[str]:
    """The relative link targets of ``markdown`` outside code blocks, without their fragments."""
    text = FENCE.sub("", markdown.read_text())
    found = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path:  # http(s)://, mailto:, or "#section"
            continue
        found.append(unquote(parts.path))
    return found


@pytest.mark.parametrize("markdown", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_that_exists(markdown: Path) -> None:
    missing = [t for t in relative_links(markdown) if not (markdown.parent / t).exists()]
    assert not missing, f"{markdown.relative_to(REPO)} links to missing files: {missing}"


def test_the_link_check_sees_links_and_images(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('[a](docs/a.md#x) [web](https://example.com) [here](#top) <img src="img/b.png" width="9">\n'
                    "```bash\necho [not](a-link.md)\n```\n")
    assert relative_links(page) == ["docs/a.md", "img/b.png"]


@pytest.mark.slow
def test_the_schedule_example_runs_and_publishes_a_version(tmp_path: Path) -> None:
    out = run_block(shell_block(REPO / "docs" / "jobspec.md", "## Run a schedule once"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"-> ctr-main version 1 promoted", out.stdout), out.stdout[-3000:]
    fs = json.loads((tmp_path / ".seqattn" / "artifacts" / "ctr-main" / "1" / "featureset.json").read_text())
    assert fs["version"] == 1 and fs["features"]
    assert sorted(p.name for p in (tmp_path / "data" / "daily").glob("day=*")) == [
        "day=2026-01-01", "day=2026-01-02", "day=2026-01-03"]
