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

import os
from pathlib import Path, PurePosixPath

from pipelines.errors import SpecError
from pipelines.spec import JobSpec

MAX_FILES_CHECKED = 100_000


def _inside(real: str, roots: list[str]) -> bool:
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def check_path(path: str, roots: list[Path], field: str) -> str:
    """The real path of ``path`` (relative paths are taken under the first root), or a
    :class:`SpecError` on ``field`` when it leaves the roots or does not exist."""
    if "\x00" in path:
        raise SpecError(field, "the path contains a NUL character")
    if ".." in PurePosixPath(path).parts or ".." in Path(path).parts:
        raise SpecError(field, f"{path!r} contains '..'; give a path inside a data root without '..'")
    real_roots = [os.path.realpath(r) for r in roots]
    candidate = Path(path) if Path(path).is_absolute() else Path(real_roots[0]) / path
    real = os.path.realpath(candidate)
    shown = ", ".join(real_roots)
    if not _inside(real, real_roots):
        where = "resolves (through a symlink) to a place" if _inside(str(candidate), real_roots) else "lies"
        raise SpecError(field, f"{path!r} {where} outside the data roots ({shown}); move the data under one "
                        "or add its folder to SEQATTN_DATA_ROOTS")
    if not os.path.exists(real):
        raise SpecError(field, f"{path!r} not found (give a Parquet file or a directory of them)")
    if os.path.isdir(real):
        for count, child in enumerate(Path(real).rglob("*")):
            if count >= MAX_FILES_CHECKED:
                raise SpecError(field, f"{path!r} holds more than {MAX_FILES_CHECKED} files")
            if child.is_symlink() and not _inside(os.path.realpath(child), real_roots):
                rel = child.relative_to(real)
                raise SpecError(field, f"{path!r} holds {str(rel)!r}, a symlink to a place outside the data roots "
                                f"({shown})")
    return real


def checked_spec(spec: JobSpec, roots: list[Path]) -> JobSpec:
    """``spec`` with its dataset path checked and made real, its columns and counts checked
    against the Parquet schema (the same messages as :func:`pipelines.job.check_selection`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.ray_data import check_parquet

    real = check_path(spec.dataset.path, roots, "dataset.path")
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": real})})
    source = check_parquet(spec.dataset)
    columns = source.columns
    n_features = len(columns.dense) + len(columns.sparse)
    k = spec.selection.features
    if k is not None and k > n_features:
        raise SpecError("selection.features", f"{k} is more than the {n_features} candidate features "
                        f"({len(columns.dense)} dense, {len(columns.sparse)} sparse)")
    schema = pq.read_schema(source.files[0])
    multi = {f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)}
    single = [n for n in columns.sparse if n not in multi]
    pairs = len(single) * (len(single) - 1) // 2
    if spec.selection.crosses > pairs:
        raise SpecError("selection.crosses", f"{spec.selection.crosses} is more than the {pairs} pairs of "
                        "single-valued sparse features")
    return spec
