"""The feature-set registry on disk: versions 1, 2, 3 ... per name, immutable, with a promoted one.

Layout under ``SEQATTN_HOME`` (docs/architecture.md, "State on disk"):

- ``seqattn.db``: SQLite in WAL mode (readers never block the writer); the tables
  ``feature_set_versions`` (one row per published version: where its file is, its headline
  metrics, the promotion decision and the stability against the version before) and
  ``feature_set_promoted`` (name -> promoted version) and ``promotions`` (the promotion log: every
  change of the promoted version, by whom, and the version it replaced; what
  :meth:`Registry.rollback` reads). The service keeps its own tables (jobs, schedules) in the
  same file.
- ``artifacts/{name}/{version}/``: ``featureset.json`` and, when the run left them, its export
  artifacts (``preprocessing.json``, ``vocabularies/``, ``model/``: docs/export.md). The folder is
  written as a temporary folder and renamed, inside the transaction that allocates the version,
  so a published version always has all its files and none is ever rewritten.

Promotion (docs/architecture.md, "Promotion"): the first version of a name is promoted at once.
After that, ``promote: auto`` promotes a version whose validation AUC is not worse than the
promoted one's by more than ``epsilon`` (0.001) and whose embedding memory and latency fit the
spec's budgets; otherwise it is kept and marked ``rejected``. ``promote: manual`` keeps it
``pending`` until :meth:`Registry.promote`.

Every promotion, whoever makes it (a first version, the auto policy on publish, a promotion by
hand, a rollback; from the API, ``seqattn pipeline run`` or the scheduler), is logged in the
``promotions`` table inside the transaction that changes the promoted version, so the log and
``feature_set_promoted`` never disagree and a rollback works whichever process promoted.

Example::

    >>> import tempfile
    >>> from pipelines.spec import FeatureSet, FeatureSetMetrics, JobSpec, SelectedFeature
    >>> reg = Registry(tempfile.mkdtemp())
    >>> spec = JobSpec(name="ctr", dataset={"path": "d", "label": "y"})
    >>> fs = FeatureSet(name="ctr", spec=spec, features=[SelectedFeature(name="a", kind="sparse", rank=1, score=1.0)],
    ...                 metrics={"val_auc": 0.70})
    >>> reg.publish(fs).decision, reg.publish(fs.model_copy(
    ...     update={"metrics": FeatureSetMetrics(val_auc=0.6)})).decision
    ('promoted', 'rejected')
    >>> reg.get("ctr").version, [v.version for v in reg.versions("ctr")]
    (1, [1, 2])
    >>> [(p["version"], p["previous_version"], p["source"]) for p in reg.promotions("ctr")]
    [(1, None, 'publish')]
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipelines.errors import SpecError
from pipelines.spec import FeatureSet

DEFAULT_EPSILON = 0.001
DB_NAME = "seqattn.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_set_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    job_id TEXT,
    created_at TEXT NOT NULL,
    path TEXT NOT NULL,
    val_auc REAL,
    embedding_mb REAL,
    inference_ms REAL,
    decision TEXT NOT NULL CHECK (decision IN ('promoted', 'rejected', 'pending')),
    reason TEXT NOT NULL,
    previous_version INTEGER,
    jaccard REAL,
    rank_correlation REAL,
    source TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS feature_set_promoted (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    promoted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS promotions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    previous_version INTEGER,
    source TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS promotions_name ON promotions (name, seq);
"""


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$SEQATTN_HOME``, else ``./.seqattn``."""
    return Path(home if home is not None else os.environ.get("SEQATTN_HOME", ".seqattn"))


class VersionInfo(BaseModel):
    """What the index says of one published version. :class:`VersionRecord` adds where the
    FeatureSet is stored and its ``source`` as recorded; the HTTP API's answer adds its URL."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    job_id: str | None
    created_at: str
    val_auc: float | None
    embedding_mb: float | None
    inference_ms: float | None
    decision: str
    reason: str
    previous_version: int | None
    jaccard: float | None
    rank_correlation: float | None
    promoted: bool = False


class VersionRecord(VersionInfo):
    """One published version as the index holds it (the FeatureSet itself is in ``path``, relative
    to the registry's home; ``source`` is the publisher's text, a JSON document for a schedule's run)."""

    path: str
    source: str | None


@dataclass(frozen=True)
class Stability:
    """How much a version's choice moved from the one before it."""

    previous_version: int
    jaccard: float  # |kept ∩ kept'| / |kept ∪ kept'| over feature names
    rank_correlation: float  # Spearman over every shared candidate's importance order


def importance_order(fs: FeatureSet) -> list[str]:
    """Candidates from most to least important: the kept features by rank, then the others by score."""
    kept = [f.name for f in sorted(fs.features, key=lambda f: f.rank)]
    rest = sorted((c for c in fs.candidates if c.kind != "cross" and c.name not in set(kept)),
                  key=lambda c: -c.score)
    return kept + [c.name for c in rest]


def stability(new: FeatureSet, old: FeatureSet, old_version: int) -> Stability:
    """Jaccard of the kept feature sets and Spearman correlation of the importance orders.

    Example::

        >>> from pipelines.spec import FeatureSet, JobSpec, SelectedFeature, Candidate
        >>> spec = JobSpec(name="x", dataset={"path": "d", "label": "y"})
        >>> def fs(kept, others):
        ...     feats = [SelectedFeature(name=n, kind="sparse", rank=i + 1, score=1.0) for i, n in enumerate(kept)]
        ...     cands = [Candidate(name=n, kind="sparse", score=s, selected=n in kept) for n, s in others]
        ...     return FeatureSet(name="x", spec=spec, features=feats, candidates=cands)
        >>> s = stability(fs(["a", "b"], [("c", 0.2), ("d", 0.1)]), fs(["a", "c"], [("b", 0.3), ("d", 0.0)]), 1)
        >>> round(s.jaccard, 3), round(s.rank_correlation, 3)
        (0.333, 0.8)
    """
    a = {f.name for f in new.features}
    b = {f.name for f in old.features}
    jaccard = len(a & b) / len(a | b) if a | b else 1.0
    order_new, order_old = importance_order(new), importance_order(old)
    shared = [n for n in order_new if n in set(order_old)]
    if len(shared) < 2:
        rho = float("nan")
    else:
        pos_old = {n: i for i, n in enumerate(n for n in order_old if n in set(shared))}
        x = np.arange(len(shared), dtype=np.float64)
        y = np.array([pos_old[n] for n in shared], dtype=np.float64)
        rho = float(np.corrcoef(x, y)[0, 1])
    return Stability(old_version, jaccard, rho)


def promotion_decision(candidate: FeatureSet, promoted: FeatureSet | None,
                       epsilon: float = DEFAULT_EPSILON) -> tuple[str, str]:
    """(``promoted`` | ``rejected`` | ``pending``, reason) for ``candidate`` against the promoted one.

    The reason says what the comparison found, in the direction it went: the candidate's
    validation AUC beats the promoted one's by some margin, ties it, is below it but within
    ``epsilon``, or is worse by more than ``epsilon`` (rejected).

    Example::

        >>> from pipelines.spec import FeatureSet, JobSpec
        >>> spec = JobSpec(name="x", dataset={"path": "d", "label": "y"}, constraints={"max_embedding_mb": 1})
        >>> new = FeatureSet(name="x", spec=spec, features=[], metrics={"val_auc": 0.7, "embedding_mb": 2.0})
        >>> promotion_decision(new, None)[0]
        'promoted'
        >>> promotion_decision(new, new)
        ('rejected', 'embedding_mb 2.0000 exceeds constraints.max_embedding_mb 1.0')
        >>> old = FeatureSet(name="x", spec=spec, version=1, features=[], metrics={"val_auc": 0.7891})
        >>> better = FeatureSet(name="x", spec=spec, features=[], metrics={"val_auc": 0.8464, "embedding_mb": 0.5})
        >>> promotion_decision(better, old)[1]
        "val_auc 0.8464 beats the promoted v1's 0.7891 by 0.0573; budgets hold"
    """
    if promoted is None:
        return "promoted", "first version of this name"
    if candidate.spec.promote == "manual":
        return "pending", "promote: manual; waiting for a promotion by hand"
    m, c = candidate.metrics, candidate.spec.constraints
    if c.max_embedding_mb is not None and (m.embedding_mb is None or m.embedding_mb > c.max_embedding_mb):
        return "rejected", (f"embedding_mb {_fmt(m.embedding_mb)} exceeds constraints.max_embedding_mb "
                            f"{c.max_embedding_mb}")
    if c.max_inference_ms is not None and (m.inference_ms is None or m.inference_ms > c.max_inference_ms):
        return "rejected", (f"inference_ms {_fmt(m.inference_ms)} exceeds constraints.max_inference_ms "
                            f"{c.max_inference_ms}")
    budgets = "; budgets hold" if c.max_embedding_mb is not None or c.max_inference_ms is not None else ""
    new_auc, old_auc = m.val_auc, promoted.metrics.val_auc
    theirs = f"the promoted v{promoted.version}'s" if promoted.version is not None else "the promoted version's"
    if old_auc is None or not np.isfinite(old_auc):
        return "promoted", f"val_auc {_fmt(new_auc)}; {theirs} val_auc is unknown, so there is nothing to beat{budgets}"
    if new_auc is None or not np.isfinite(new_auc):
        return "rejected", f"val_auc {_fmt(new_auc)} cannot be compared with {theirs} {_fmt(old_auc)}"
    diff = new_auc - old_auc
    if diff < -epsilon:
        return "rejected", (f"val_auc {_fmt(new_auc)} is worse than {theirs} {_fmt(old_auc)} by {_fmt_diff(-diff)}, "
                            f"more than epsilon {epsilon}")
    if diff > 0:
        found = f"beats {theirs} {_fmt(old_auc)} by {_fmt_diff(diff)}"
    elif diff == 0:
        found = f"ties {theirs} {_fmt(old_auc)}"
    else:
        found = f"is below {theirs} {_fmt(old_auc)} by {_fmt_diff(-diff)}, within epsilon {epsilon}"
    return "promoted", f"val_auc {_fmt(new_auc)} {found}{budgets}"


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.4f}"


def _fmt_diff(x: float) -> str:
    """A positive AUC difference: 4 decimals, or 2 significant digits when that would read 0.0000."""
    return f"{x:.4f}" if x >= 0.00005 else f"{x:.2g}"


def now_iso(at: datetime | None = None) -> str:
    """UTC time as fixed-width ISO text (``...Z``), the one time format of ``seqattn.db``: SQLite
    then compares times as strings correctly."""
    at = at or datetime.now(timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """The datetime that :func:`now_iso` wrote."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class PromotionConflict(SpecError):
    """A promotion or rollback that contradicts the current state: a stale ``expected`` version,
    or nothing to roll back to. (The service answers it with 409.)"""


class Registry:
    """Versioned, immutable feature sets under ``home`` (default ``$SEQATTN_HOME`` or ``./.seqattn``).

    Safe for several processes: a version number is allocated and its file written inside one
    ``BEGIN IMMEDIATE`` transaction, so two publishers never get the same number.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = home_dir(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / DB_NAME
        self.artifacts = self.home / "artifacts"
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._backfill_promotions(db)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to ``seqattn.db`` in autocommit mode with rows as mappings; the service
        opens its own tables (jobs, schedules) through it too, so both share one way in."""
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    # -- writing ---------------------------------------------------------------------------------
    def publish(self, fs: FeatureSet, *, epsilon: float = DEFAULT_EPSILON, source: str | None = None,
                promoted_by: str = "publish", artifacts: Path | None = None) -> VersionRecord:
        """Give ``fs`` the next version of its name, write it, decide its promotion; return its record.

        ``source`` is free text kept with the version (a schedule's window, say); ``promoted_by``
        is who published it (``job``, ``schedule:NAME``), logged when the policy promotes it.
        ``artifacts`` is the run's artifacts folder (``run_job(..., artifacts=...)``), copied into
        the version's folder with the FeatureSet, all of it or nothing.
        """
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT COALESCE(MAX(version), 0) AS v FROM feature_set_versions WHERE name = ?",
                                 (fs.name,)).fetchone()
                version = int(row["v"]) + 1
                previous = self._load_version(db, fs.name, version - 1) if version > 1 else None
                promoted_version = self._promoted_version(db, fs.name)
                promoted = self._load_version(db, fs.name, promoted_version) if promoted_version else None
                decision, reason = promotion_decision(fs, promoted, epsilon)
                stable = stability(fs, previous, version - 1) if previous is not None else None
                created = fs.created_at or datetime.now(timezone.utc)
                final = fs.model_copy(update={"version": version, "created_at": created})
                path = self._write_artifact(final, artifacts)
                m = final.metrics
                db.execute(
                    "INSERT INTO feature_set_versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (fs.name, version, fs.job_id, now_iso(created), str(path.relative_to(self.home)), m.val_auc,
                     m.embedding_mb, m.inference_ms, decision, reason,
                     stable.previous_version if stable else None, stable.jaccard if stable else None,
                     _finite_or_none(stable.rank_correlation) if stable else None, source))
                if decision == "promoted":
                    self._set_promoted(db, fs.name, version, promoted_by)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.record(fs.name, version)

    def promote(self, name: str, version: int, *, expected: int | None = None,
                promoted_by: str = "manual") -> VersionRecord:
        """Promote ``version`` of ``name`` by hand (``promote: manual``, or overriding a rejection).

        ``expected``: only if the promoted version is still that one (a compare-and-set, checked in
        the same transaction as the write); else :class:`PromotionConflict` naming ``expected_version``.
        """
        with self.transaction() as db:
            self._require(db, name, version)
            current = self._promoted_version(db, name)
            if expected is not None and current != expected:
                raise PromotionConflict("expected_version",
                                        f"the promoted version of {name!r} is {current}, not {expected}")
            self._set_promoted(db, name, version, promoted_by)
        return self.record(name, version)

    def rollback_target(self, name: str, db: sqlite3.Connection | None = None) -> tuple[int | None, str]:
        """What :meth:`rollback` would promote: ``(version, "")``, or ``(None, why)`` when it cannot.
        (The version the served one replaced, from the promotion log; the dashboard asks first.)"""
        if db is None:
            with self.connect() as own:
                return self.rollback_target(name, own)
        current = self._promoted_version(db, name)
        if current is None:
            return None, f"feature set {name!r} has no promoted version to roll back from"
        row = db.execute("SELECT previous_version FROM promotions WHERE name = ? AND version = ? "
                         "ORDER BY seq DESC LIMIT 1", (name, current)).fetchone()
        if row is None or row["previous_version"] is None:
            return None, _nothing_to_roll_back(db, name, current)
        return int(row["previous_version"]), ""

    def rollback(self, name: str, *, promoted_by: str = "rollback") -> VersionRecord:
        """Promote again the version that the current one replaced (:meth:`rollback_target`);
        :class:`PromotionConflict` naming ``name`` when it replaced none."""
        with self.transaction() as db:
            previous, why = self.rollback_target(name, db)
            if previous is None:
                self._require_name(db, name)
                raise PromotionConflict("name", why)
            self._require(db, name, previous)
            self._set_promoted(db, name, previous, promoted_by)
        return self.record(name, previous)

    def promoted_version(self, name: str) -> int | None:
        """The served version of ``name`` (None: none promoted, or no such name): one indexed lookup."""
        with self.connect() as db:
            return self._promoted_version(db, name)

    def promoted_versions(self, db: sqlite3.Connection | None = None) -> dict[str, int]:
        """Every name's served version, read in one statement (a snapshot); on ``db`` when given
        (the serving cache keeps one connection open to notice changes cheaply)."""
        if db is None:
            with self.connect() as own:
                return self.promoted_versions(own)
        return {str(n): int(v) for n, v in db.execute("SELECT name, version FROM feature_set_promoted")}

    def promotions(self, name: str) -> list[dict[str, object]]:
        """The promotion log of ``name``, oldest first: ``version``, ``previous_version`` (the one
        it replaced), ``source`` (who: ``publish``, ``job``, ``schedule:NAME``, ``manual``,
        ``rollback``) and ``at``."""
        with self.connect() as db:
            rows = db.execute("SELECT version, previous_version, source, at FROM promotions WHERE name = ? "
                              "ORDER BY seq", (name,)).fetchall()
        return [dict(r) for r in rows]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on ``seqattn.db`` (``BEGIN IMMEDIATE``: one writer at a time, across
        processes), committed when the block ends and rolled back when it raises."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _set_promoted(self, db: sqlite3.Connection, name: str, version: int, promoted_by: str) -> None:
        """Serve ``version`` and log the change (none when it is already served), in ``db``'s transaction."""
        current = self._promoted_version(db, name)
        if current == version:
            return
        at = now_iso()
        db.execute("INSERT INTO feature_set_promoted VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                   "version = excluded.version, promoted_at = excluded.promoted_at", (name, version, at))
        db.execute("INSERT INTO promotions (name, version, previous_version, source, at) VALUES (?, ?, ?, ?, ?)",
                   (name, version, current, promoted_by, at))

    def _backfill_promotions(self, db: sqlite3.Connection) -> None:
        """Log the promotions that registries before the promotion log made without a trace.

        Before every promotion was logged here, a version promoted by ``seqattn pipeline run`` (or
        any publish outside the service) left no log entry, so it could not be rolled back. For
        each name whose promoted version has no entry, the versions the policy promoted after the
        last logged one are logged in order (source ``backfill``), then the promoted version if it
        is not the last of them. Homes written since have nothing to backfill (one query).
        """
        missing = db.execute(
            "SELECT p.name, p.version, p.promoted_at FROM feature_set_promoted p WHERE NOT EXISTS "
            "(SELECT 1 FROM promotions q WHERE q.name = p.name AND q.version = p.version)").fetchall()
        if not missing:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for name, promoted, promoted_at in missing:
                if self._promoted_version(db, name) != promoted or db.execute(
                        "SELECT 1 FROM promotions WHERE name = ? AND version = ?", (name, promoted)).fetchone():
                    continue  # another process logged it meanwhile
                logged = db.execute("SELECT version FROM promotions WHERE name = ? ORDER BY seq", (name,)).fetchall()
                last = logged[-1]["version"] if logged else None
                newest_logged = max((r["version"] for r in logged), default=0)
                auto = db.execute("SELECT version, created_at FROM feature_set_versions WHERE name = ? AND "
                                  "decision = 'promoted' AND version > ? AND version <= ? ORDER BY version",
                                  (name, newest_logged, promoted)).fetchall()
                entries = [(r["version"], r["created_at"]) for r in auto]
                if not entries or entries[-1][0] != promoted:
                    entries.append((promoted, promoted_at))
                for version, at in entries:
                    db.execute("INSERT INTO promotions (name, version, previous_version, source, at) "
                               "VALUES (?, ?, ?, 'backfill', ?)", (name, version, last, at))
                    last = version
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write_artifact(self, fs: FeatureSet, artifacts: Path | None = None) -> Path:
        """Write the version's folder (featureset.json, plus a copy of ``artifacts``) under a temporary
        name and rename it into place; returns the path of its featureset.json."""
        parent = self.artifacts / fs.name
        folder = parent / str(fs.version)
        parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            # Left by a publisher that died before its commit: never indexed, so never published.
            os.replace(folder, parent / f".{fs.version}.abandoned-{int(time.time())}-{os.getpid()}")
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{fs.version}-", suffix=".tmp"))
        try:
            if artifacts is not None:
                shutil.copytree(artifacts, tmp, dirs_exist_ok=True, copy_function=_link_or_copy,
                                ignore=lambda _d, names: [n for n in names if n == "featureset.json"])
            fd, tmp_file = tempfile.mkstemp(dir=tmp, prefix=".featureset-", suffix=".tmp")
            with os.fdopen(fd, "w") as out:
                out.write(fs.model_dump_json(indent=2))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_file, tmp / "featureset.json")
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder / "featureset.json"

    # -- reading ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self.connect() as db:
            return [r["name"] for r in db.execute("SELECT DISTINCT name FROM feature_set_versions ORDER BY name")]

    def versions(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, oldest first (empty when the name is unknown)."""
        with self.connect() as db:
            promoted = self._promoted_version(db, name)
            rows = db.execute("SELECT * FROM feature_set_versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        return [_record(r, promoted) for r in rows]

    def record(self, name: str, version: int | None = None) -> VersionRecord:
        """The index row of ``version`` (None: the promoted one)."""
        with self.connect() as db:
            promoted = self._promoted_version(db, name)
            version = version if version is not None else promoted
            if version is None:
                raise SpecError("name", f"feature set {name!r} has no promoted version")
            return _record(self._require(db, name, version), promoted)

    def get(self, name: str, version: int | None = None) -> FeatureSet:
        """The FeatureSet ``version`` of ``name`` (None: the promoted one)."""
        rec = self.record(name, version)
        return FeatureSet.model_validate_json((self.home / rec.path).read_text())

    def latest(self, name: str) -> VersionRecord | None:
        found = self.versions(name)
        return found[-1] if found else None

    def _promoted_version(self, db: sqlite3.Connection, name: str) -> int | None:
        row = db.execute("SELECT version FROM feature_set_promoted WHERE name = ?", (name,)).fetchone()
        return int(row["version"]) if row else None

    def _require_name(self, db: sqlite3.Connection, name: str) -> None:
        if db.execute("SELECT 1 FROM feature_set_versions WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
            raise SpecError("name", f"no feature set {name!r}")

    def _require(self, db: sqlite3.Connection, name: str, version: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM feature_set_versions WHERE name = ? AND version = ?",
                         (name, version)).fetchone()
        if row is None:
            known = [r["version"] for r in db.execute(
                "SELECT version FROM feature_set_versions WHERE name = ? ORDER BY version", (name,))]
            have = f"versions are {_list(known)}" if known else "no versions exist"
            raise SpecError("version", f"feature set {name!r} has no version {version}; {have}")
        return row

    def _load_version(self, db: sqlite3.Connection, name: str, version: int) -> FeatureSet:
        row = self._require(db, name, version)
        return FeatureSet.model_validate_json((self.home / row["path"]).read_text())


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where ``src`` is on the same filesystem (a model's tables can be large), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _list(xs: Sequence[int]) -> str:
    return ", ".join(map(str, xs))


def _nothing_to_roll_back(db: sqlite3.Connection, name: str, current: int) -> str:
    """Why ``name`` cannot be rolled back: its promoted version replaced none (it was the first)."""
    others = db.execute("SELECT version, decision FROM feature_set_versions WHERE name = ? AND version != ? "
                        "ORDER BY version", (name, current)).fetchall()
    why = f"feature set {name!r} has no earlier promotion to roll back to: v{current} is the only promoted version"
    if not others:
        return why + " (and the only version)"
    never = ", ".join(f"v{r['version']} {r['decision']}" for r in others)
    return why + f" (never promoted: {never}); promote one of those by its version instead"


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _record(row: sqlite3.Row, promoted: int | None) -> VersionRecord:
    data = {k: row[k] for k in row.keys()}
    return VersionRecord(**data, promoted=promoted == row["version"])
