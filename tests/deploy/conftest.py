"""The deploy tests reuse the helpers of the pipelines tests (real Ray nodes, :mod:`ray_nodes`) and
of the service tests (a real ``seqattn serve``, :mod:`live_server`) rather than copies of them."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for helper_dir in (TESTS / "pipelines", TESTS / "services"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))
