"""Export a FeatureSet for the systems that consume it.

* ``torchrec``: JSON a training pipeline can load directly: the ``EmbeddingBagConfig`` list (one
  table per kept sparse feature and per cross, with its chosen width), the dense columns, and each
  cross's id function. ``to_embedding_bag_configs`` turns it back into TorchRec objects.
* ``feast``: a Python module defining a Feast ``FeatureService`` pinned to this version.

Published and unpublished sets. A version number is given by the registry when a set is published
(``seqattn pipeline run``, the service); a set written by ``seqattn select --out`` or ``seqattn
demo`` has none (``version`` is null). An export never makes one up:

* a published set is named by its version: the Feast service ``{name}-v{N}`` (variable
  ``{name}_v{N}``, tags ``seqattn_feature_set`` and ``seqattn_version: "N"``), the TorchRec
  ``feature_set`` ``{"name": name, "version": N}``;
* an unpublished one is named ``{name}-unpublished`` (variable ``{name}_unpublished``), a name no
  published version can take, and has no ``seqattn_version`` tag. Its TorchRec ``feature_set``
  keeps the key ``version``, as ``null`` (a reader can always look it up), and adds
  ``published: false`` and a ``note`` saying why. The job id, when the set has one, tells
  unpublished runs apart: tag ``seqattn_job_id``, ``feature_set.job_id``.

Example::

    >>> from pipelines.spec import JobSpec, SelectedFeature
    >>> fs = FeatureSet(name="ctr-main", spec=JobSpec(name="ctr-main", dataset={"path": "d", "label": "y"}),
    ...                 features=[SelectedFeature(name="C3", kind="sparse", rank=1, score=0.2, embedding_dim=8)])
    >>> release_name(fs), release_name(fs.model_copy(update={"version": 3}))
    ('ctr-main-unpublished', 'ctr-main-v3')
    >>> torchrec_config(fs)["feature_set"]["published"]
    False
"""

from __future__ import annotations

import json
from typing import Any

from torchrec import EmbeddingBagConfig

from pipelines.spec import FeatureSet

# The id function of a cross, as implemented in seqattn_core.crosses.cross_ids (ids are the
# encoded feature ids the tables are indexed by).
CROSS_HASH = (
    "exact a*card_b+b when card_a*card_b <= buckets; else h=(a*0x9E3779B97F4A7C15+b)*0xBF58476D1CE4E5B9 "
    "(uint64, wrapping), h^=h>>31, id=h mod buckets"
)


UNPUBLISHED_NOTE = ("never published to a registry, so it has no version; publish it (seqattn pipeline run, or "
                     "the service) to get one")


def release_name(fs: FeatureSet) -> str:
    """What an export calls this set: ``{name}-v{N}`` once published, ``{name}-unpublished`` before."""
    return f"{fs.name}-v{fs.version}" if fs.version is not None else f"{fs.name}-unpublished"


def torchrec_config(fs: FeatureSet) -> dict[str, Any]:
    """The chosen configuration as plain data (see the module docstring). ``feature_set.version``
    is null, with ``published: false`` and a ``note``, for a set that was never published."""
    tables: list[dict[str, Any]] = []
    for f in fs.features:
        if f.kind == "sparse":
            tables.append({"name": f"t_{f.name}", "feature_names": [f.name], "embedding_dim": f.embedding_dim,
                           "num_embeddings": None})
    for c in fs.crosses:
        name = f"{c.features[0]}_X_{c.features[1]}"
        tables.append({"name": f"t_{name}", "feature_names": [name], "embedding_dim": c.embedding_dim,
                       "num_embeddings": c.buckets, "cross": {"features": list(c.features), "hash": CROSS_HASH}})
    about: dict[str, Any] = {"name": fs.name, "version": fs.version}
    if fs.version is None:  # say so rather than leave a reader to guess what null means
        about.update({"published": False, **({"job_id": fs.job_id} if fs.job_id else {}), "note": UNPUBLISHED_NOTE})
    return {
        "feature_set": about,
        "dense": [f.name for f in fs.features if f.kind == "dense"],
        "sparse": [f.name for f in fs.features if f.kind == "sparse"],
        "tables": tables,
        "embedding_mb": fs.metrics.embedding_mb,
    }


def to_embedding_bag_configs(config: dict[str, Any], cardinalities: dict[str, int]) -> list[EmbeddingBagConfig]:
    """TorchRec table configs from :func:`torchrec_config`; sparse tables take their row counts
    from the training pipeline's vocabularies (``cardinalities``)."""
    out = []
    for t in config["tables"]:
        rows = t["num_embeddings"] or cardinalities[t["feature_names"][0]]
        out.append(EmbeddingBagConfig(name=t["name"], embedding_dim=int(t["embedding_dim"]), num_embeddings=int(rows),
                                      feature_names=list(t["feature_names"])))
    return out


def feast_definition(fs: FeatureSet, feature_view: str = "features") -> str:
    """A Feast ``FeatureService`` that projects exactly the kept features of this version, named
    ``{name}-v{N}``; ``{name}-unpublished``, with no version tag, for a set never published."""
    names = [f.name for f in fs.features] + sorted({n for c in fs.crosses for n in c.features}
                                                   - {f.name for f in fs.features})
    name = release_name(fs)
    tags = {"seqattn_feature_set": fs.name}
    if fs.version is not None:
        tags["seqattn_version"] = str(fs.version)
        what = f"the features kept by feature set {fs.name!r} version {fs.version}."
    else:
        what = (f"the features kept by feature set {fs.name!r}, which was\n# {UNPUBLISHED_NOTE}.")
        if fs.job_id:
            tags["seqattn_job_id"] = fs.job_id
    variable = "".join(ch if ch.isalnum() else "_" for ch in name)
    if not variable.isidentifier():  # a name may start with a digit; a Python variable may not
        variable = f"fs_{variable}"
    return (
        f"# Generated by seqattn: {what}\n"
        "from feast import FeatureService\n\n"
        f"from feature_repo import {feature_view}  # your FeatureView holding these columns\n\n"
        f"{variable} = FeatureService(\n"
        f"    name={name!r},\n"
        f"    features=[{feature_view}[{names!r}]],\n"
        f"    tags={tags!r},\n"
        ")\n"
    )


def export_feature_set(fs: FeatureSet, fmt: str) -> str:
    """``fs`` as ``fmt`` (``torchrec``: JSON text; ``feast``: Python source); see the module docstring."""
    if fmt == "torchrec":
        return json.dumps(torchrec_config(fs), indent=2)
    if fmt == "feast":
        return feast_definition(fs)
    raise ValueError(f"format: unknown export format {fmt!r}; use torchrec or feast")
