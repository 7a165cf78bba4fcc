"""A FeatureSet as a complete Feast feature repository, one folder per version.

:func:`write_feast_repository` writes::

    feature_store.yaml      project, a local registry (data/registry.db), SQLite online store, file offline store
    seqattn_features.py     Entity (the key column), FileSource (the Parquet, its timestamp column),
                            FeatureView (explicit schema: the kept features and the crosses' inputs),
                            OnDemandFeatureView (each kept cross's id, by the training hash rule),
                            FeatureService ``{name}-v{N}`` (the kept features and the crosses)
    vocabularies/           the crosses' inputs' vocabularies, for reference (the on-demand view embeds them)
    featureset.json

``feast apply`` in that folder registers it; docs/export.md has the whole round trip. The schema
is written out from the Parquet's own types, so nothing is inferred: a dictionary (categorical)
column is declared by its value type. The on-demand view's function is self-contained (its
imports, the vocabularies and the constants are inside it), because Feast rebuilds it from its
source text in the serving process; so the crosses' inputs' vocabularies are written into it, up
to :data:`MAX_EMBEDDED_VALUES` values in all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dataset import dataset_files
from pipelines.errors import SpecError
from pipelines.export import REPO_FILE, about, release_name, torchrec_config
from pipelines.spec import FeatureSet

__all__ = ["MAX_EMBEDDED_VALUES", "feast_type", "write_feast_repository"]

MAX_EMBEDDED_VALUES = 500_000


def _identifier(text: str) -> str:
    """``text`` as a Python name, as :func:`pipelines.export.feast_definition` names the views."""
    out = "".join(ch if ch.isalnum() else "_" for ch in text)
    return out if out.isidentifier() else f"fs_{out}"


def feast_type(t: pa.DataType) -> str:
    """The Feast type (as Python source) of a Parquet column of type ``t``.

        >>> feast_type(pa.dictionary(pa.int32(), pa.string())), feast_type(pa.list_(pa.int64()))
        ('String', 'Array(Int64)')
    """
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = feast_type(t.value_type)
        return f"Array({inner})"
    if pa.types.is_boolean(t):
        return "Bool"
    if pa.types.is_integer(t):
        return "Int32" if t.bit_width <= 32 and pa.types.is_signed_integer(t) else "Int64"
    if pa.types.is_float32(t):
        return "Float32"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "Float64"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "String"
    raise SpecError("--source", f"a column of type {t} has no Feast type this export writes")


def _schema(source: str) -> pa.Schema:
    root, files = dataset_files(source)
    try:
        return pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as exc:
        raise SpecError("--source", f"cannot read {source!r} as Parquet: {exc}") from None


_UDF = '''
@on_demand_feature_view(name={name!r}, sources=[{view}], schema=[{fields}], mode="pandas")
def {func}(inputs: pd.DataFrame) -> pd.DataFrame:
    """Each kept cross's id, as training computed it: the two inputs' ids (1 + row in the
    vocabulary, 0 outside it or null), then id = a*card_b + b when card_a*card_b <= buckets, else
    h = (a*0x9E3779B97F4A7C15 + b)*0xBF58476D1CE4E5B9 (uint64, wrapping), h ^= h >> 31, h mod buckets."""
    import numpy as np
    import pandas as pd

    crosses = {crosses!r}
    vocabularies = {vocabularies!r}
    lookups = {{n: {{v: i + 1 for i, v in enumerate(vs)}} for n, vs in vocabularies.items()}}

    def column(name: str) -> pd.Series:
        for key in (name, {view_name!r} + "__" + name):
            if key in inputs.columns:
                return inputs[key]
        raise KeyError(name)

    def ids(name: str) -> np.ndarray:
        table = lookups[name]
        return np.array([0 if pd.isna(v) else table.get(v, 0) for v in column(name).tolist()], dtype=np.int64)

    out = pd.DataFrame(index=inputs.index)
    for name, a_name, b_name, card_a, card_b, buckets in crosses:
        a, b = ids(a_name), ids(b_name)
        if card_a * card_b <= buckets:
            out[name] = a * card_b + b
        else:
            with np.errstate(over="ignore"):
                h = (a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + b.astype(np.uint64)) \\
                    * np.uint64(0xBF58476D1CE4E5B9)
                h ^= h >> np.uint64(31)
            out[name] = (h % np.uint64(buckets)).astype(np.int64)
    return out
'''


def feast_repository_source(fs: FeatureSet, manifest: dict[str, Any], vocabularies: dict[str, list[Any]],
                            schema: pa.Schema, source: str, entity: str, timestamp: str) -> str:
    """The Python source of the repository's definitions (see the module docstring)."""
    release = release_name(fs)
    var = _identifier(release)
    kept = [f.name for f in fs.features]
    inputs = [n for c in manifest["crosses"] for n in c["features"] if n not in kept]
    view_features = list(dict.fromkeys(kept + inputs))
    for flag, column in (("--entity", entity), ("--timestamp", timestamp)):
        if column not in schema.names:
            raise SpecError(flag, f"column {column!r} is not in {source!r}; its columns are: {', '.join(schema.names)}")
    if not (pa.types.is_timestamp(schema.field(timestamp).type) or pa.types.is_date(schema.field(timestamp).type)):
        raise SpecError("--timestamp", f"column {timestamp!r} has type {schema.field(timestamp).type}, not a timestamp")
    missing = [n for n in view_features if n not in schema.names]
    if missing:
        raise SpecError("--source", f"{source!r} lacks the feature columns {', '.join(missing)}")
    tags = {"seqattn_feature_set": fs.name, **({"seqattn_version": str(fs.version)} if fs.version else {}),
            **({"seqattn_job_id": fs.job_id} if fs.job_id else {})}
    key_type = feast_type(schema.field(entity).type)
    value_type = {"Int32": "INT32", "Int64": "INT64", "String": "STRING"}.get(key_type)
    if value_type is None:
        raise SpecError("--entity", f"column {entity!r} has type {schema.field(entity).type}; a key is an integer or "
                        "a string")
    fields = ", ".join(f"Field(name={n!r}, dtype={feast_type(schema.field(n).type)})" for n in view_features)
    what = (f"version {fs.version}" if fs.version is not None else "never published (no version)")
    lines = [
        f"# Generated by seqattn export --format feast: feature set {fs.name!r}, {what}.",
        "# Edit the source path or the TTL if you need to; the schema and the crosses are the model's.",
        "from datetime import timedelta",
        "",
        "import pandas as pd",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        "from feast.on_demand_feature_view import on_demand_feature_view",
        "from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String  # noqa: F401",
        "",
        f"{var}_entity = Entity(name={entity!r}, join_keys=[{entity!r}], value_type=ValueType.{value_type})",
        f"{var}_source = FileSource(name={release + '-source'!r}, path={source!r}, timestamp_field={timestamp!r})",
        f"{var}_features = FeatureView(",
        f"    name={var + '_features'!r},",
        f"    entities=[{var}_entity],",
        "    ttl=timedelta(days=3650),",
        f"    schema=[{fields}],",
        f"    source={var}_source,",
        "    online=True,",
        f"    tags={tags!r},",
        ")",
    ]
    members = [f"{var}_features[{kept!r}]"]
    if manifest["crosses"]:
        crosses = [(c["name"], c["features"][0], c["features"][1], c["card_a"], c["card_b"], c["buckets"])
                   for c in manifest["crosses"]]
        names = sorted({n for c in manifest["crosses"] for n in c["features"]})
        lines.append(_UDF.format(name=f"{var}_crosses", view=f"{var}_features", func=f"{var}_crosses",
                                 view_name=f"{var}_features", crosses=crosses,
                                 vocabularies={n: vocabularies[n] for n in names},
                                 fields=", ".join(f"Field(name={c[0]!r}, dtype=Int64)" for c in crosses)))
        members.append(f"{var}_crosses")
    lines += [
        f"{var} = FeatureService(",
        f"    name={release!r},",
        f"    features=[{', '.join(members)}],",
        f"    tags={tags!r},",
        ")",
    ]
    return "\n".join(lines) + "\n"


def write_feast_repository(out: Path, fs: FeatureSet, artifacts: Path | None, source: str, entity: str,
                           timestamp: str) -> dict[str, Any]:
    """Write the Feast repository of ``fs`` to ``out`` (new, or empty) over the Parquet ``source``
    keyed by ``entity`` with event times ``timestamp``; returns what it wrote (names, features)."""
    manifest = torchrec_config(fs, artifacts)
    assert artifacts is not None
    source = str(Path(source).resolve())
    schema = _schema(source)
    by_name = {s["name"]: s for s in manifest["sparse"]}
    inputs = sorted({n for c in manifest["crosses"] for n in c["features"]})
    vocabularies = {n: pq.read_table(artifacts / by_name[n]["vocabulary"]).column("value").to_pylist() for n in inputs}
    total = sum(len(v) for v in vocabularies.values())
    if total > MAX_EMBEDDED_VALUES:
        raise SpecError("--format", f"the crosses' inputs have {total:,} vocabulary values; the Feast export embeds "
                        f"them in its on-demand view and takes at most {MAX_EMBEDDED_VALUES:,}")
    text = feast_repository_source(fs, manifest, vocabularies, schema, source, entity, timestamp)
    project = _identifier(fs.name).lower()
    yaml = (f"project: {project}\nregistry: data/registry.db\nprovider: local\n"
            "online_store:\n    type: sqlite\n    path: data/online_store.db\n"
            "offline_store:\n    type: file\nentity_key_serialization_version: 3\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecError("--out", f"{str(out)!r} exists and is not empty; an export is never overwritten "
                        "(give a new folder)")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    os.chmod(tmp, 0o755)
    try:
        (tmp / "feature_store.yaml").write_text(yaml)
        (tmp / REPO_FILE).write_text(text)
        (tmp / "data").mkdir()
        for n in inputs:
            target = tmp / by_name[n]["vocabulary"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifacts / by_name[n]["vocabulary"], target)
        (tmp / "featureset.json").write_text(fs.model_dump_json(indent=2))
        (tmp / "crosses.json").write_text(json.dumps(manifest["crosses"], indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return {"feature_set": about(fs), "project": project, "feature_service": release_name(fs),
            "features": [f.name for f in fs.features], "crosses": [c["name"] for c in manifest["crosses"]]}
