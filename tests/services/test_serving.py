"""The serving cache: answers from memory, sees a promotion by any connection on the next request."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_server import publish_versions

from pipelines.errors import SpecError
from pipelines.registry import Registry
from services.selector_api.serving import FeatureSetCache, etag_matches


def test_promotion_elsewhere_is_seen_on_the_next_request(tmp_path: Path) -> None:
    publish_versions(tmp_path, "ctr", (0.70, 0.71))
    cache = FeatureSetCache(Registry(tmp_path))
    first = cache.promoted("ctr")
    assert first is not None and first.version == 2
    assert cache.promoted("ctr") is first  # the same object: served from memory
    Registry(tmp_path).promote("ctr", 1)  # another connection, as another process would be
    again = cache.promoted("ctr")
    assert again is not None and again.version == 1 and again.etag != first.etag
    assert again.body == (tmp_path / "artifacts" / "ctr" / "1" / "featureset.json").read_bytes()
    assert cache.promoted("unknown") is None
    with pytest.raises(SpecError):
        cache.version("ctr", 9)
    cache.close()


def test_etag_matching() -> None:
    tag = '"ctr-1-abc"'
    assert etag_matches(tag, tag) and etag_matches("*", tag)
    assert etag_matches(f'"x", W/{tag}', tag)
    assert not etag_matches(None, tag) and not etag_matches('"ctr-2-abc"', tag)
