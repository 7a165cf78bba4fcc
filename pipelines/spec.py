"""The JobSpec a user writes (YAML or JSON) and the FeatureSet a job writes back.

One pydantic model per contract (docs/jobspec.md), shared by the CLI, the API and the schedules, so a
spec means the same thing everywhere. Every model forbids unknown keys: ``epoch: 3`` instead of
``epochs: 3`` is an error, not a silently ignored line. Validation problems come out as one
:class:`~pipelines.errors.SpecError` naming the field path, e.g.
``selection.embedding_dims[1]: 6 is not a multiple of 4 (FBGEMM's fused kernels need multiples of 4)``.

Example::

    >>> spec = load_spec({"name": "ctr-main", "dataset": {"path": "data/ctr", "label": "click"},
    ...                   "selection": {"features": 10, "embedding_dims": [16, 4, 8, 8]}})
    >>> spec.selection.embedding_dims, spec.training.epochs, spec.promote
    ([4, 8, 16], 2, 'auto')
    >>> try:
    ...     load_spec({"name": "ctr", "dataset": {"path": "d", "label": "y"}, "training": {"epoch": 3}})
    ... except SpecError as exc:
    ...     print(exc.field, "|", exc.message)
    training.epoch | unknown field 'epoch'; did you mean 'epochs'? (allowed: attention_heads, batch_size, embedding_dim, epochs, interaction, learning_rate, num_workers, seed)
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipelines.errors import SpecError

if typing.TYPE_CHECKING:
    from seqattn_core.pruning import PruningConfig

__all__ = [
    "Candidate", "Compression", "Constraints", "DatasetSpec", "FeatureSet", "FeatureSetMetrics", "JobSpec", "PrunedLayer",
    "PruningSpec",
    "SelectedCross", "SelectedFeature", "SelectionSpec", "SpecError", "TrainingSpec",
    "as_spec_error", "load_spec",
]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _check_embedding_dim(value: int) -> int:
    # FBGEMM's table-batched kernels (CPU and CUDA) load rows in 4-float vectors.
    if value <= 0:
        raise ValueError(f"{value} is not positive; embedding dims are positive multiples of 4")
    if value % 4:
        raise ValueError(f"{value} is not a multiple of 4 (FBGEMM's fused kernels need multiples of 4)")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _path_to_str(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


Name = Annotated[str, AfterValidator(_check_name)]
EmbeddingDim = Annotated[int, AfterValidator(_check_embedding_dim)]


class StrictModel(BaseModel):
    """The base of every spec model: unknown fields are errors, values are frozen, numbers finite."""

    # Frozen: a spec is a record of what was asked; change it with ``model_copy(update=...)``.
    # No inf or NaN: ``learning_rate: 1e309`` is infinity, and ``max_inference_ms: .inf`` is no budget.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetSpec(StrictModel):
    """Where the examples are and which columns play which role.

    ``dense``/``sparse`` left out (``None``) are inferred from the Parquet schema (see
    :func:`pipelines.dataset.resolve_columns`); an explicit list, even ``[]``, is used as given.

    Example::

        >>> DatasetSpec(path="data/ctr", label="click", sparse=["user", "item"]).validation_fraction
        0.2
    """

    path: Annotated[str, BeforeValidator(_path_to_str), AfterValidator(_non_empty)]
    label: Annotated[str, AfterValidator(_non_empty)]
    dense: list[str] | None = None
    sparse: list[str] | None = None
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    # How rows reach training: "memory" reads the table once into arrays (fastest for small data);
    # "stream" reads Parquet in bounded batches for every pass, memory flat in rows
    # (pipelines.stream); "auto" streams above STREAM_ROWS rows or when a vocabulary cap is set.
    reader: Literal["auto", "memory", "stream"] = "auto"
    # Vocabulary of each sparse column (streamed reads): values seen fewer than min_count times in
    # the train split, or beyond the max_vocabulary most frequent, share the out-of-vocabulary id 0.
    min_count: int = Field(1, ge=1)
    max_vocabulary: int | None = Field(None, ge=1)
    # The split (streamed reads). split_key: rows with the same value of this column (a user id) fall on
    # the same side. split_time: out-of-time validation, the last validation_fraction of rows by this
    # column (a timestamp). Neither column is a feature unless listed under dense or sparse.
    split_key: str | None = None
    split_time: str | None = None

    @field_validator("dense", "sparse")
    @classmethod
    def _distinct_roles(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        seen: set[str] = set()
        for column in value:
            if column in seen:
                raise ValueError(f"column {column!r} is listed twice")
            seen.add(column)
        if info.data.get("label") in seen:
            raise ValueError(f"column {info.data['label']!r} is the label; it cannot also be a feature")
        if info.field_name == "sparse":
            both = [c for c in value if c in (info.data.get("dense") or [])]
            if both:
                raise ValueError(f"column {both[0]!r} is listed under both dataset.dense and dataset.sparse")
        return value

    @field_validator("split_key", "split_time")
    @classmethod
    def _split_column(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must be a column name")
        if value == info.data.get("label"):
            raise ValueError(f"column {value!r} is the label; split by another column")
        if info.data.get("reader") == "memory":
            raise ValueError("a split by a column needs a streamed read: set dataset.reader to stream or auto")
        if info.field_name == "split_time" and info.data.get("split_key"):
            raise ValueError("set one of dataset.split_key and dataset.split_time, not both")
        return value


class SelectionSpec(StrictModel):
    """What to choose: how many features, how many crosses, which embedding widths.

    ``gate_holdout`` is the share of the training rows that train the gates only: each gate then
    scores what its candidate adds on rows the weights never fit, not how well its table memorises.
    0, the default, is the paper's variant: gates and weights learn from the same rows.

    ``crosses`` is a ceiling: only pairs that beat the additive model on held-out rows by more than
    0.001 nats (``seqattn_core.crosses.prescreen_pairs``) are candidates, so a job may add fewer.

    Example::

        >>> SelectionSpec(features=10, crosses=3, embedding_dims=[32, 4, 8, 4]).embedding_dims
        [4, 8, 32]
    """

    features: int | None = Field(None, ge=1)
    crosses: int = Field(0, ge=0)
    embedding_dims: list[EmbeddingDim] = Field(default_factory=list)
    # The share of the training rows (chosen by a hash of each row's content) whose loss trains the
    # gates and nothing else; 0, the default, is the paper's variant (docs/jobspec.md says why).
    gate_holdout: float = Field(0.0, ge=0, lt=0.5)

    @field_validator("embedding_dims")
    @classmethod
    def _sorted_unique(cls, value: list[int]) -> list[int]:
        return sorted(set(value))


class Constraints(StrictModel):
    """Budgets the result must fit: all embedding tables (MB) and one 1,024-example batch (ms)."""

    max_embedding_mb: float | None = Field(None, gt=0)
    max_inference_ms: float | None = Field(None, gt=0)


class TrainingSpec(StrictModel):
    """Training of the gated model and of the retrained one.

    ``embedding_dim`` is the table width when ``selection.embedding_dims`` is empty.
    """

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(2048, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    embedding_dim: EmbeddingDim = 16
    num_workers: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's generators take 32-bit seeds
    interaction: Literal["dcn", "autoint"] = "dcn"
    attention_heads: int = Field(4, ge=1, le=64)


class PruningSpec(StrictModel):
    """Compression of the retrained model (SequentialAttention++, ``seqattn_core.pruning``).

    ``sparsity`` prunes the hidden layers of the MLP tower into ``block`` x ``block`` tiles
    (``null``: no pruning); ``method`` picks SequentialAttention++'s ``attention`` importance or the
    ``magnitude`` baseline; ``rank_by`` is how the attention picks the tiles it keeps: ``weight``
    (the tile's norm in use) or ``logits`` (the attention's own score). ``weight_decay`` adds an L2
    penalty on the pruned layers' weights. ``docs/pruning_ablation.md`` measures both: ranking by
    the logits wins on the planted data and ties or loses on Frappe; weight decay 0.01 lowers the
    planted data's log-loss for every method and leaves Frappe's where it was. ``cycles`` is how many
    times the dense, sparsify, sparse schedule runs; ``docs/pruning_schedule.md`` measures 1 to 3:
    one cycle gave every method its lowest log-loss on the planted data. ``heads`` keeps that
    many of the ``interaction: autoint`` model's ``attention_heads``, chosen by Sequential Attention
    over the heads in the selection run.
    """

    sparsity: float | None = Field(None, gt=0, lt=1)
    block: int = Field(8, ge=1, le=64)
    method: Literal["attention", "magnitude"] = "attention"
    rank_by: Literal["weight", "logits"] = "weight"
    weight_decay: float = Field(0.0, ge=0)
    cycles: int = Field(2, ge=1, le=10)
    heads: int | None = Field(None, ge=1)

    def config(self) -> PruningConfig | None:
        """The tower's :class:`~seqattn_core.pruning.PruningConfig`, or None when ``sparsity`` is unset.

        Example::

            >>> PruningSpec(sparsity=0.9, cycles=1).config().phases()[-1][0]
            'sparse'
        """
        from seqattn_core.pruning import PruningConfig  # here: reading a spec does not import torch

        if self.sparsity is None:
            return None
        return PruningConfig(self.sparsity, self.block, self.method, cycles=self.cycles,
                             weight_decay=self.weight_decay, rank_by=self.rank_by)


class JobSpec(StrictModel):
    """One selection job, as written in YAML or posted to ``POST /v1/jobs``.

    Example::

        >>> spec = JobSpec(name="ctr-main", dataset=DatasetSpec(path="data/ctr", label="click"))
        >>> spec.selection.crosses, spec.constraints.max_embedding_mb, spec.training.batch_size
        (0, None, 2048)
        >>> spec.model_copy(update={"promote": "manual"}).promote
        'manual'
    """

    name: Name
    dataset: DatasetSpec
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    constraints: Constraints = Field(default_factory=Constraints)
    promote: Literal["auto", "manual"] = "auto"
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    pruning: PruningSpec = Field(default_factory=PruningSpec)

    @field_validator("selection", "constraints", "training", "pruning", mode="before")
    @classmethod
    def _empty_section_means_defaults(cls, value: Any) -> Any:
        # A YAML section whose keys are all commented out parses as null.
        return {} if value is None else value

    @model_validator(mode="after")
    def _heads_need_autoint(self) -> JobSpec:
        heads = self.pruning.heads
        if heads is not None and self.training.interaction != "autoint":
            raise ValueError("pruning.heads: choosing attention heads needs training.interaction: autoint")
        if heads is not None and heads > self.training.attention_heads:
            raise ValueError(f"pruning.heads: {heads} is more than training.attention_heads "
                             f"({self.training.attention_heads})")
        return self

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> JobSpec:
        """Read a YAML (or JSON) spec file; any problem is one :class:`SpecError`."""
        return load_spec(Path(path))


# --- FeatureSet: what a job writes (docs/jobspec.md, "The FeatureSet") ---------------------


class SelectedFeature(StrictModel):
    """A kept feature; ``rank`` 1 was chosen first. Dense columns have no ``embedding_dim``."""

    name: str
    kind: Literal["dense", "sparse"]
    rank: int = Field(ge=1)
    score: float
    embedding_dim: int | None = None


class SelectedCross(StrictModel):
    """A kept pairwise cross, hashed into ``buckets`` ids (see ``seqattn_core.crosses``)."""

    features: tuple[str, str]
    rank: int = Field(ge=1)
    score: float
    buckets: int = Field(ge=1)
    embedding_dim: int | None = None


class Candidate(StrictModel):
    """Every candidate the gates raced, selected or not, with its final score."""

    name: str
    kind: Literal["dense", "sparse", "cross", "dims"]
    score: float
    selected: bool


class FeatureSetMetrics(BaseModel):
    """Validation figures; the ``*_all_features`` ones come from the every-feature reference model.

    Open to extra keys (``extra="allow"``) so a new metric does not break older readers.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    val_auc: float | None = None
    val_logloss: float | None = None
    val_auc_all_features: float | None = None
    embedding_mb: float | None = None
    embedding_mb_all_features: float | None = None
    inference_ms: float | None = None


class PrunedLayer(StrictModel):
    """One block-pruned layer of the retrained tower: its weight shape and the tiles it kept
    (row-major indices over ``ceil(out / block) x ceil(in / block)`` tiles)."""

    shape: list[int]
    block: int
    blocks: int
    kept: int
    kept_blocks: list[int]


class Compression(StrictModel):
    """What the JobSpec's ``pruning`` section kept in the retrained model: the tiles of each pruned
    tower layer and, for ``interaction: autoint``, the heads (indices into the searched heads)."""

    method: Literal["attention", "magnitude"] | None = None
    block_sparsity: float = 0.0
    layers: list[PrunedLayer] = Field(default_factory=list)
    heads_kept: list[int] = Field(default_factory=list)
    tower_weights: int = 0  # weights of the pruned layers, dense
    tower_weights_kept: int = 0  # of which in kept tiles


class LatencyTrim(StrictModel):
    """What the latency stage removed to meet ``constraints.max_inference_ms``.

    The stage measures the selection's full choice (``ms_before``, per 1,024-row batch on the host
    that ran the job), then drops the last picks, crosses before features, until the measured time
    fits (``ms_after``). Empty ``removed_*`` lists mean the choice fitted as it was.

    Example::

        >>> t = LatencyTrim(budget_ms=5, ms_before=7.5, ms_after=4.2, removed_crosses=[("a", "b")])
        >>> t.removed_features, t.removed_crosses
        ([], [('a', 'b')])
    """

    budget_ms: float
    ms_before: float
    ms_after: float
    removed_features: list[str] = Field(default_factory=list)
    removed_crosses: list[tuple[str, str]] = Field(default_factory=list)


class FeatureSet(StrictModel):
    """A job's result; immutable once written. ``version``, ``job_id`` and ``created_at`` are set
    by whoever publishes it (the registry; ``seqattn select --out`` writes version null), so a local
    run may leave them out.

    Example::

        >>> fs = FeatureSet(
        ...     name="ctr-main", spec=JobSpec(name="ctr-main", dataset={"path": "d", "label": "y"}),
        ...     features=[SelectedFeature(name="C3", kind="sparse", rank=1, score=0.21, embedding_dim=16)],
        ...     metrics={"val_auc": 0.79}, timings={"selection_s": 40.1})
        >>> fs.version is None, fs.features[0].name, fs.metrics.val_auc
        (True, 'C3', 0.79)
        >>> FeatureSet.model_validate_json(fs.model_dump_json()) == fs
        True
    """

    name: Name
    version: int | None = Field(None, ge=1)
    job_id: str | None = None
    created_at: datetime | None = None
    spec: JobSpec
    features: list[SelectedFeature]
    crosses: list[SelectedCross] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    metrics: FeatureSetMetrics = Field(default_factory=FeatureSetMetrics)
    timings: dict[str, float] = Field(default_factory=dict)
    pruning: Compression | None = None
    latency: LatencyTrim | None = None  # set when constraints.max_inference_ms is


# --- loading and error messages ----------------------------------------------------------------


def load_spec(source: str | os.PathLike[str] | Mapping[str, Any] | JobSpec) -> JobSpec:
    """A :class:`JobSpec` from a YAML/JSON file path, a mapping, or a spec (returned as is).

    Raises :class:`SpecError` naming the first bad field (the CLI's exit code 2).
    """
    if isinstance(source, JobSpec):
        return source
    if isinstance(source, Mapping):
        data: Any = source
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError("spec", f"{str(path)!r} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
        except FileNotFoundError:
            raise SpecError("spec", f"file {str(path)!r} not found") from None
        except OSError as exc:
            raise SpecError("spec", f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError("spec", f"{str(path)!r} is not valid YAML{where}: {problem}") from None
        if not isinstance(data, Mapping):
            got = type(data).__name__
            raise SpecError("spec", f"{str(path)!r} must hold a mapping (name:, dataset:, ...), got {got}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise as_spec_error(exc, JobSpec) from None


def as_spec_error(exc: ValidationError, model: type[BaseModel] = JobSpec) -> SpecError:
    """One :class:`SpecError` for a pydantic error: the first problem, located and in words.

    Further problems are counted in the message rather than listed, so the user fixes one field
    at a time with a message that fits on a line.

    Example::

        >>> try:
        ...     TrainingSpec(epochs=0, embedding_dim=6)
        ... except ValidationError as exc:
        ...     print(as_spec_error(exc, TrainingSpec))
        epochs: must be greater than or equal to 1 (got 0) (and 1 more problem: embedding_dim)
    """
    return SpecError(*first_problem(exc.errors(include_url=False), model))


def first_problem(errors: Sequence[Mapping[str, Any]], model: type[BaseModel] | None = None,
                  field_of: Callable[[Mapping[str, Any]], str] | None = None) -> tuple[str, str]:
    """``(field, message)`` for a list of pydantic errors: the first, in words, with the others
    counted and named. The CLI (:func:`as_spec_error`) and the HTTP API (whose locations start
    with ``body``/``query``/...: its ``field_of`` strips that) both answer with it, so a message
    reads the same on both.

        >>> first_problem([{"type": "missing", "loc": ("name",)}, {"type": "missing", "loc": ("dataset",)}])
        ('name', 'required field is missing (and 1 more problem: dataset)')
    """
    field_of = field_of or (lambda e: loc_to_path(e["loc"]))
    first = errors[0]
    field = field_of(first)
    message = describe_error(first, model)
    if not field and (located := re.fullmatch(r"([a-z_][\w.\[\]]*): (.+)", message, re.DOTALL)):
        field, message = located.groups()  # a check across sections names its own field
    if len(errors) > 1:
        others = ", ".join(dict.fromkeys(field_of(e) or "(top level)" for e in errors[1:]))
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}: {others})"
    return field, message


def loc_to_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the dotted path users write: ``("selection", "dims", 1)`` ->
    ``selection.dims[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_error(error: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """One pydantic error in words, the same for the CLI and the HTTP API. With the ``model`` the
    error came from, an unknown field's message lists the allowed ones and the closest match."""
    kind, loc = error["type"], error["loc"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        if model is None:
            return "unknown field"
        allowed = sorted(_model_at(model, loc[:-1]).model_fields)
        unknown = str(loc[-1])
        close = difflib.get_close_matches(unknown, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown field {unknown!r}{hint} (allowed: {', '.join(allowed)})"
    if kind == "json_invalid":
        at = loc[1:2]
        where = f" at character {at[0]}" if at and isinstance(at[0], int) else ""
        return f"is not valid JSON: {error.get('ctx', {}).get('error', 'parse error')}{where}"
    if kind == "value_error" and "ctx" in error:
        return str(error["ctx"]["error"])
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields (got {shown})"
    msg = str(error.get("msg") or "is invalid")
    msg = msg.replace("Input should be", "must be", 1)
    msg = msg[0].lower() + msg[1:]
    return f"{msg} (got {shown})"


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The nested model class a location points into (for listing its allowed fields)."""
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue
        inner = _find_model(model.model_fields[part].annotation)
        if inner is None:
            break
        model = inner
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
