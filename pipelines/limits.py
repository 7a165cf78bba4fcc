"""Job size limits: how large a job a shared service accepts, so that one spec cannot exhaust it.

A JobSpec's own ranges say what is meaningful (``epochs >= 1``). These limits say what a service
is willing to run: ``training.embedding_dim: 1073741824`` is a valid spec and would take the
machine down. The service checks :meth:`JobLimits.check` when a job or a schedule is submitted,
and :meth:`JobLimits.check_tables` once the data is encoded, before any training. An operator
raises a limit in the service's settings (``SEQATTN_MAX_EPOCHS`` and the rest). ``seqattn
select`` on the command line runs on the user's own machine and applies none of them.

Example::

    >>> from pipelines.spec import JobSpec
    >>> spec = JobSpec(name="x", dataset={"path": "d", "label": "y"}, training={"epochs": 500})
    >>> try:
    ...     JobLimits().check(spec)
    ... except SpecError as exc:
    ...     print(exc)
    training.epochs: 500 is more than this service's limit of 100 (an operator raises it with SEQATTN_MAX_EPOCHS)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.errors import SpecError
from pipelines.spec import JobSpec


@dataclass(frozen=True)
class JobLimits:
    """The largest job a service runs; each field's setting is ``SEQATTN_`` + its name, upper-cased."""

    max_epochs: int = 100
    max_batch_size: int = 65_536
    max_embedding_dim: int = 512  # the widest table a job may train (search width included)
    max_workers: int = 64
    max_table_rows: int = 20_000_000  # ids of the largest vocabulary or cross
    max_features: int = 5_000  # columns of the dataset that take part

    def _over(self, field: str, value: int, limit: int, setting: str) -> None:
        if value > limit:
            raise SpecError(field, f"{value:,} is more than this service's limit of {limit:,} (an operator raises "
                            f"it with SEQATTN_{setting.upper()})")

    def check(self, spec: JobSpec) -> None:
        """Refuse a spec over any limit that does not need the data."""
        t = spec.training
        self._over("training.epochs", t.epochs, self.max_epochs, "max_epochs")
        self._over("training.batch_size", t.batch_size, self.max_batch_size, "max_batch_size")
        self._over("training.embedding_dim", t.embedding_dim, self.max_embedding_dim, "max_embedding_dim")
        self._over("training.num_workers", t.num_workers, self.max_workers, "max_workers")
        for i, d in enumerate(spec.selection.embedding_dims):
            self._over(f"selection.embedding_dims[{i}]", d, self.max_embedding_dim, "max_embedding_dim")

    def check_tables(self, table_rows: Mapping[str, int], n_features: int) -> None:
        """Refuse data whose largest table or whose number of features is over the limits."""
        self._over("dataset", n_features, self.max_features, "max_features")
        if table_rows:
            name = max(table_rows, key=lambda n: table_rows[n])
            if table_rows[name] > self.max_table_rows:
                raise SpecError("dataset", f"column {name!r} has {table_rows[name]:,} distinct ids, more than this "
                                f"service's limit of {self.max_table_rows:,} rows per table (an operator raises it "
                                "with SEQATTN_MAX_TABLE_ROWS)")
