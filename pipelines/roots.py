"""Data roots: the folders a service's jobs may read, checked again each time a file is opened.

A check made only when a job is submitted can be escaped later. A queued job's file can be replaced
by a symlink to a file outside the roots, and a partition can be symlinked into a scheduled
dataset after the schedule was created. So every read of a job that has roots goes through
:meth:`DataRoots.filesystem`, a read-only pyarrow filesystem. At each open it resolves the file's
real path and refuses one outside the roots, and then it opens the resolved path. pyarrow in
process and Ray Data's read tasks both use it (it pickles), and so do the footer checks. Jobs run
from the command line have no roots and read what the user names.

Example::

    >>> import os, tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> inside, outside = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"y": [0, 1]}), os.path.join(outside, "t.parquet"))
    >>> os.symlink(os.path.join(outside, "t.parquet"), os.path.join(inside, "t.parquet"))
    >>> roots = DataRoots.of([inside])
    >>> try:
    ...     pq.read_table(os.path.join(inside, "t.parquet"), filesystem=roots.filesystem())
    ... except PermissionError as exc:
    ...     print("refused:", "outside the data roots" in str(exc))
    refused: True
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from pipelines.errors import SpecError

MAX_FILES_CHECKED = 100_000


@dataclass(frozen=True)
class DataRoots:
    """Real paths of the folders that dataset paths must lie under."""

    roots: tuple[str, ...]

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike[str]]) -> DataRoots:
        return cls(tuple(os.path.realpath(p) for p in paths))

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path``'s real location (symlinks resolved) lies under a root."""
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def check(self, path: str, field: str = "dataset.path") -> str:
        """The real path of ``path`` (a relative one is taken under the first root), or a
        :class:`SpecError` on ``field`` when it leaves the roots or does not exist. A directory's
        files are checked too, so a symlink planted inside a root is refused now, not at run time."""
        if "\x00" in path:
            raise SpecError(field, "the path contains a NUL character")
        if ".." in PurePosixPath(path).parts or ".." in Path(path).parts:
            raise SpecError(field, f"{path!r} contains '..'; give a path inside a data root without '..'")
        candidate = Path(path) if Path(path).is_absolute() else Path(self.roots[0]) / path
        real = os.path.realpath(candidate)
        shown = ", ".join(self.roots)
        if not self.contains(real):
            where = "resolves (through a symlink) to a place" if self._lexically_inside(candidate) else "lies"
            raise SpecError(field, f"{path!r} {where} outside the data roots ({shown}); move the data under one "
                            "or add its folder to SEQATTN_DATA_ROOTS")
        if not os.path.exists(real):
            raise SpecError(field, f"{path!r} not found (give a Parquet file or a directory of them)")
        if os.path.isdir(real):
            for count, child in enumerate(Path(real).rglob("*")):
                if count >= MAX_FILES_CHECKED:
                    raise SpecError(field, f"{path!r} holds more than {MAX_FILES_CHECKED} files")
                if child.is_symlink() and not self.contains(child):
                    raise SpecError(field, f"{path!r} holds {str(child.relative_to(real))!r}, a symlink to a place "
                                    f"outside the data roots ({shown})")
        return real

    def _lexically_inside(self, path: Path) -> bool:
        text = str(path)
        return any(text == r or text.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def filesystem(self) -> pafs.FileSystem:
        """A read-only local filesystem that refuses, at open time, any file outside the roots."""
        return pafs.PyFileSystem(_RootedHandler(self))


class _RootedHandler(pafs.FileSystemHandler):
    """pyarrow's local filesystem, read-only, with every opened file resolved and checked."""

    def __init__(self, roots: DataRoots) -> None:
        self.roots = roots
        self._local: pafs.LocalFileSystem | None = None

    def __reduce__(self) -> tuple[Any, ...]:  # Ray Data ships the filesystem to its read tasks
        return (_RootedHandler, (self.roots,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _RootedHandler) and other.roots == self.roots

    @property
    def local(self) -> pafs.LocalFileSystem:
        if self._local is None:
            self._local = pafs.LocalFileSystem()
        return self._local

    def _checked(self, path: str) -> str:
        real = os.path.realpath(path)
        if not self.roots.contains(real):
            raise PermissionError(f"{path!r} resolves to {real!r}, outside the data roots "
                                  f"({', '.join(self.roots.roots)})")
        return real

    def get_type_name(self) -> str:
        return "seqattn-data-roots"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.local.get_file_info(selector)

    def open_input_file(self, path: str) -> Any:
        return self.local.open_input_file(self._checked(path))

    def open_input_stream(self, path: str) -> Any:
        return self.local.open_input_stream(self._checked(path))

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError("the data roots are read-only to jobs")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only
