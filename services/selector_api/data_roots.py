"""Dataset paths a request may name: only inside the configured data roots (``SEQATTN_DATA_ROOTS``).

A path is rejected when it has a ``..`` part, and when its real location (symlinks resolved, for
the path itself and for every file under a directory) lies outside every root, so neither
``../../etc`` nor a symlink planted inside a root can make a job read elsewhere. The checked real
path replaces the one given, so the job reads exactly what was checked.

:func:`checked_spec` adds the checks a job would otherwise fail on after it was queued (missing
columns, more features asked than exist), read from the Parquet footers only, so a bad spec is a
4xx at submission rather than a failed job.

Example::

    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "ctr"))
    >>> check_path("ctr", [Path(root)], "dataset.path") == os.path.realpath(os.path.join(root, "ctr"))
    True
    >>> try:
    ...     check_path("../x", [Path(root)], "dataset.path")
    ... except SpecError as exc:
    ...     print(exc.field)
    dataset.path
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import SpecError
from pipelines.limits import JobLimits
from pipelines.roots import DataRoots
from pipelines.spec import JobSpec


def check_path(path: str, roots: list[Path], field: str) -> str:
    """The real path of ``path`` (relative paths are taken under the first root), or a
    :class:`SpecError` on ``field`` when it leaves the roots or does not exist
    (:meth:`pipelines.roots.DataRoots.check`)."""
    return DataRoots.of(roots).check(path, field)


def checked_spec(spec: JobSpec, roots: list[Path], limits: JobLimits | None = None) -> JobSpec:
    """``spec`` within the service's job ``limits``, with its dataset path checked and made real, its
    columns and counts checked against the Parquet schema (the same messages as
    :func:`pipelines.job.check_selection`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.ray_data import check_parquet

    if limits is not None:
        limits.check(spec)
    checked = DataRoots.of(roots)
    real = checked.check(spec.dataset.path, "dataset.path")
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": real})})
    source = check_parquet(spec.dataset, checked)
    columns = source.columns
    n_features = len(columns.dense) + len(columns.sparse)
    k = spec.selection.features
    if k is not None and k > n_features:
        raise SpecError("selection.features", f"{k} is more than the {n_features} candidate features "
                        f"({len(columns.dense)} dense, {len(columns.sparse)} sparse)")
    with checked.filesystem().open_input_file(source.files[0]) as f:
        schema = pq.read_schema(f)
    multi = {f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)}
    single = [n for n in columns.sparse if n not in multi]
    pairs = len(single) * (len(single) - 1) // 2
    if spec.selection.crosses > pairs:
        raise SpecError("selection.crosses", f"{spec.selection.crosses} is more than the {pairs} pairs of "
                        "single-valued sparse features")
    return spec
