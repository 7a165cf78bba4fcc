"""Export a FeatureSet for the systems that consume it: a self-contained folder per version.

* ``torchrec`` (:func:`write_torchrec_export`): ``manifest.json`` (the tables with their rows,
  widths and pooling, the crosses with their hash rule and constants, the dense standardisation,
  the label, the feature set's name and version, the KJT key order and the model's architecture),
  the vocabularies (Parquet), the trained weights and reference rows when the run kept them, and
  ``seqattn_runtime.py`` (:mod:`pipelines.export_runtime`, which imports nothing of seqattn) to
  encode raw rows and build the model. Layout and examples: docs/export.md.
* ``feast`` (:mod:`pipelines.export_feast`): a complete Feast feature repository.

Both need the run's artifacts (``preprocessing.json``, ``vocabularies/``, ``model/``): written by
``run_job(..., artifacts=...)``, published by the registry beside ``featureset.json``, and left by
``seqattn select --out FS.json`` in ``FS.artifacts/`` (:func:`find_artifacts`).

Published and unpublished sets. A version number is given by the registry when a set is published
(``seqattn pipeline run``, the service); a set written by ``seqattn select --out`` or ``seqattn
demo`` has none (``version`` is null). An export never makes one up: a published set is named
``{name}-v{N}``, an unpublished one ``{name}-unpublished`` (a name no published version can take),
with ``published: false`` and a ``note`` in the manifest.

Example::

    >>> from pipelines.spec import JobSpec, SelectedFeature
    >>> fs = FeatureSet(name="ctr-main", spec=JobSpec(name="ctr-main", dataset={"path": "d", "label": "y"}),
    ...                 features=[SelectedFeature(name="C3", kind="sparse", rank=1, score=0.2, embedding_dim=8)])
    >>> release_name(fs), release_name(fs.model_copy(update={"version": 3}))
    ('ctr-main-unpublished', 'ctr-main-v3')
    >>> about(fs)["published"]
    False
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torchrec import EmbeddingBagConfig
from torchrec.modules.embedding_configs import PoolingType

import pipelines.export_runtime as runtime
from pipelines.errors import SpecError
from pipelines.preprocessing import PREPROCESSING_FILE, read_preprocessing
from pipelines.spec import FeatureSet
from seqattn_core.crosses import HASH_RULE

__all__ = ["CROSS_HASH", "about", "export_feature_set", "feast_definition", "find_artifacts", "release_name",
           "to_embedding_bag_configs", "torchrec_config", "write_torchrec_export"]

CROSS_HASH = HASH_RULE  # the id function of a cross, as seqattn_core.crosses.cross_ids computes it
RUNTIME_FILE = "seqattn_runtime.py"
REPO_FILE = "seqattn_features.py"  # the Feast repository's definitions (pipelines.export_feast)
UNPUBLISHED_NOTE = ("never published to a registry, so it has no version; publish it (seqattn pipeline run, or "
                    "the service) to get one")
MISSING_ARTIFACTS = ("has no preprocessing artifacts (vocabularies, dense moments): the ids cannot be exported. "
                     "Run the job with `seqattn select --out FS.json` (writes FS.artifacts/ beside it) or publish it "
                     "through the registry (a Ray run writes the preprocessing but no model yet)")


def release_name(fs: FeatureSet) -> str:
    """What an export calls this set: ``{name}-v{N}`` once published, ``{name}-unpublished`` before."""
    return f"{fs.name}-v{fs.version}" if fs.version is not None else f"{fs.name}-unpublished"


def about(fs: FeatureSet) -> dict[str, Any]:
    """The feature set's identity in an export: name, version (null before publishing, with
    ``published: false`` and a ``note`` saying why) and the job id when there is one."""
    out: dict[str, Any] = {"name": fs.name, "version": fs.version}
    if fs.version is None:  # say so rather than leave a reader to guess what null means
        out.update({"published": False, **({"job_id": fs.job_id} if fs.job_id else {}), "note": UNPUBLISHED_NOTE})
    return out


def find_artifacts(feature_set: Path, explicit: Path | None = None) -> Path | None:
    """Where the artifacts of the FeatureSet file ``feature_set`` are: ``explicit`` when given; else
    ``FS.artifacts/`` beside it (``seqattn select --out FS.json``); else its own folder when that holds
    ``preprocessing.json`` (a registry version, ``artifacts/{name}/{version}/``); else None."""
    if explicit is not None:
        if not (Path(explicit) / PREPROCESSING_FILE).is_file():
            raise SpecError("--artifacts", f"{str(explicit)!r} holds no {PREPROCESSING_FILE}")
        return Path(explicit)
    feature_set = Path(feature_set)
    for candidate in (feature_set.with_suffix(".artifacts"), feature_set.parent):
        if (candidate / PREPROCESSING_FILE).is_file():
            return candidate
    return None


def _model(artifacts: Path) -> dict[str, Any] | None:
    path = artifacts / "model" / "model.json"
    return dict(json.loads(path.read_text())) if path.is_file() else None


def torchrec_config(fs: FeatureSet, artifacts: Path | None) -> dict[str, Any]:
    """The export's ``manifest.json`` for ``fs`` from its ``artifacts`` (see the module docstring);
    a :class:`SpecError` on ``artifacts`` when there are none, rather than tables without rows."""
    if artifacts is None:
        raise SpecError("artifacts", f"feature set {release_name(fs)!r} {MISSING_ARTIFACTS}")
    prep = read_preprocessing(artifacts)
    sparse = prep["sparse"]
    model = _model(artifacts)
    width = fs.spec.training.embedding_dim
    crosses = {c["name"]: c for c in prep["crosses"]}
    if model is not None:
        tables = [dict(t) for t in model["tables"]]
        kjt_keys = list(model["kjt_keys"])
    else:
        tables = [{"name": f"t_{f.name}", "feature_names": [f.name], "num_embeddings": sparse[f.name]["cardinality"],
                   "embedding_dim": f.embedding_dim or width, "pooling": sparse[f.name]["pooling"]}
                  for f in fs.features if f.kind == "sparse"]
        tables += [{"name": f"t_{name}", "feature_names": [name], "num_embeddings": c.buckets,
                    "embedding_dim": c.embedding_dim or width, "pooling": "SUM"}
                   for c in fs.crosses for name in [f"{c.features[0]}_X_{c.features[1]}"]]
        kjt_keys = [t["feature_names"][0] for t in tables]
    for t in tables:
        if t["feature_names"][0] in crosses:
            t["cross"] = {"features": crosses[t["feature_names"][0]]["features"], "hash": HASH_RULE}
    return {
        "format": runtime.FORMAT,
        "feature_set": about(fs),
        "label": prep["label"],
        "id_rule": prep["id_rule"],
        "dense": prep["dense"],
        "sparse": [{"name": n, **s} for n, s in sparse.items()],
        "crosses": prep["crosses"],
        "tables": tables,
        "kjt_keys": kjt_keys,
        "model": model,
        "weights": "weights.pt" if model is not None and (artifacts / "model" / "weights.pt").is_file() else None,
        "reference": "reference.parquet" if (artifacts / "model" / "reference.parquet").is_file() else None,
        "embedding_mb": fs.metrics.embedding_mb,
    }


def to_embedding_bag_configs(config: dict[str, Any]) -> list[EmbeddingBagConfig]:
    """TorchRec table configs from a manifest (:func:`torchrec_config`): every table has its rows."""
    pooling = {"SUM": PoolingType.SUM, "MEAN": PoolingType.MEAN}
    return [EmbeddingBagConfig(name=t["name"], embedding_dim=int(t["embedding_dim"]),
                               num_embeddings=int(t["num_embeddings"]), feature_names=list(t["feature_names"]),
                               pooling=pooling[t["pooling"]]) for t in config["tables"]]


def _publish_folder(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out``: an export is complete or absent, never half written."""
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SpecError("--out", f"{str(out)!r} exists and is not empty; an export is never overwritten "
                            "(give a new folder)")
    os.replace(tmp, out)


def write_torchrec_export(out: Path, fs: FeatureSet, artifacts: Path | None) -> dict[str, Any]:
    """Write the TorchRec export folder of ``fs`` to ``out`` (which must not exist, or be empty);
    returns its manifest. Layout in docs/export.md."""
    manifest = torchrec_config(fs, artifacts)
    assert artifacts is not None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stay with the renamed folder
    try:
        for s in manifest["sparse"]:
            target = tmp / s["vocabulary"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifacts / s["vocabulary"], target)
        for name in ("weights.pt", "reference.parquet"):
            if (artifacts / "model" / name).is_file():
                shutil.copyfile(artifacts / "model" / name, tmp / name)
        shutil.copyfile(runtime.__file__, tmp / RUNTIME_FILE)
        (tmp / "featureset.json").write_text(fs.model_dump_json(indent=2))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_folder(tmp, out)
    return manifest


def _variable(name: str) -> str:
    variable = "".join(ch if ch.isalnum() else "_" for ch in name)
    return variable if variable.isidentifier() else f"fs_{variable}"  # a name may start with a digit


def feast_definition(fs: FeatureSet) -> str:
    """The ``FeatureService`` of this version alone, ``{name}-v{N}`` (``{name}-unpublished``, with no
    version tag, for a set never published), over the views of the repository that ``seqattn export
    --format feast`` writes (module ``seqattn_features``): the kept features, and the on-demand view
    of the crosses when there are any. What the HTTP route serves; the repository is the complete export."""
    name = release_name(fs)
    tags = {"seqattn_feature_set": fs.name}
    if fs.version is not None:
        tags["seqattn_version"] = str(fs.version)
        what = f"the features kept by feature set {fs.name!r} version {fs.version}."
    else:
        what = f"the features kept by feature set {fs.name!r}, which was\n# {UNPUBLISHED_NOTE}."
        if fs.job_id:
            tags["seqattn_job_id"] = fs.job_id
    var = _variable(name)
    kept = [f.name for f in fs.features]
    views = [f"{var}_features"] + ([f"{var}_crosses"] if fs.crosses else [])
    members = [f"{var}_features[{kept!r}]"] + ([f"{var}_crosses"] if fs.crosses else [])
    return (
        f"# Generated by seqattn: {what}\n"
        "from feast import FeatureService\n\n"
        f"from {REPO_FILE[:-3]} import {', '.join(views)}  # seqattn export --format feast writes them\n\n"
        f"{var} = FeatureService(\n"
        f"    name={name!r},\n"
        f"    features=[{', '.join(members)}],\n"
        f"    tags={tags!r},\n"
        ")\n"
    )


def export_feature_set(fs: FeatureSet, fmt: str, artifacts: Path | None = None) -> str:
    """``fs`` as text: ``torchrec``, the manifest JSON (needs the run's ``artifacts``); ``feast``, the
    FeatureService alone (:func:`feast_definition`). The folders are :func:`write_torchrec_export` and
    :func:`pipelines.export_feast.write_feast_repository`."""
    if fmt == "torchrec":
        return json.dumps(torchrec_config(fs, artifacts), indent=2)
    if fmt == "feast":
        return feast_definition(fs)
    raise ValueError(f"format: unknown export format {fmt!r}; use torchrec or feast")
