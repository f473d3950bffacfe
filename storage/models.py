"""The tables (docs/architecture.md#storage): runs and their artifacts, evaluations, and the blind A/B studies
(docs/study.md#blind-ab-study).

File paths are stored relative to the data dir (see storage/artifacts.py), times as timezone-aware UTC.
Constraints carry names (the naming convention below) so later migrations can alter them, SQLite included.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, MetaData, UniqueConstraint, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import JSON, BigInteger, DateTime, Integer, String, Text, TypeDecorator

STUDY_STATUSES = ("draft", "open", "closed")
PAIR_KINDS = ("normal", "gold_broken", "gold_identical", "repeat")
CRITERIA = ("quality", "alignment")
CHOICES = ("left", "right", "tie", "both_bad")
RUN_KINDS = ("teacher", "distill", "sample", "evaluate", "export")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

NAMING = {"ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
          "ck": "ck_%(table_name)s_%(constraint_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
          "pk": "pk_%(table_name)s"}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend: SQLite keeps no zone, Postgres answers in the session's zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass an aware UTC time")
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# Metrics grow with every logged step: 64-bit keys on Postgres; SQLite autoincrements only a plain INTEGER key.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Teacher(Base):
    """A teacher the studio can distil: built in, trained by a `teacher` run, or imported from a diffusers folder."""

    __tablename__ = "teachers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))          # e.g. builtin, diffusers
    path: Mapped[str | None] = mapped_column(String(1024))  # relative to the data dir; None for built-ins
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)  # data shape, classes, prediction type...
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))  # the run that trained it
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Run(Base):
    """One job and its whole life: the database, not the broker, is the source of truth (docs/architecture.md#jobs)."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("kind", RUN_KINDS), name="kind"),
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        CheckConstraint("step >= 0 AND attempts >= 0", name="counters"),
        Index(None, "status", "lease_expires_at"),  # the claim and the reaper look runs up by both
        {"sqlite_autoincrement": True},  # never reuse a deleted run's id: task messages and out_dir names carry it
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]                     # the validated RunSpec as JSON; storage does not interpret it
    status: Mapped[str] = mapped_column(String(16), default="queued")
    step: Mapped[int] = mapped_column(default=0)
    total: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=0)  # successful claims; more than one means it was resumed
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    out_dir: Mapped[str | None] = mapped_column(String(1024))  # relative to the data dir
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]              # when the latest attempt was claimed
    finished_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]           # when its task message was last sent (the reaper re-sends lost ones)


class Metric(Base):
    """One scalar of one step; a resumed run may log a step twice, so there is no unique key."""

    __tablename__ = "metrics"
    __table_args__ = (Index(None, "run_id", "key", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    key: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None]  # None stands for NaN, which SQLite cannot store


class Checkpoint(Base):
    """A saved training state; recording the same step twice only moves its path."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    path: Mapped[str] = mapped_column(String(1024))  # relative to the data dir
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Image(Base):
    """One generated sample, keyed by everything that determines it (docs/study.md#per-sample-seeded-noise) and the
    checkpoint step of the weights that drew it (docs/study.md#the-sample-key).

    Unconditional samples use class_id -1 and prompt '' rather than NULL: NULLs never collide in a unique key. For the
    same reason a teacher's checkpoint is 0; a student's is the training step of its weights (a finished run's final
    model is its final step)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("model", "seed", "class_id", "prompt", "steps", "checkpoint"),
                      CheckConstraint("class_id >= -1 AND steps >= 1", name="values"),
                      CheckConstraint("checkpoint >= 0", name="checkpoint"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model: Mapped[str] = mapped_column(String(255))  # teacher:NAME or run:ID
    seed: Mapped[int] = mapped_column(BigInteger)
    class_id: Mapped[int] = mapped_column(default=-1)
    prompt: Mapped[str] = mapped_column(Text, default="")
    steps: Mapped[int]
    path: Mapped[str] = mapped_column(String(1024))  # relative to the data dir
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))  # the run that drew it
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # The training step of the weights sampled; last because migration 0004 added it (the columns keep its order).
    checkpoint: Mapped[int] = mapped_column(default=0, server_default="0")


class Evaluation(Base):
    """One metric of one model, with what it was measured against so leaderboard rows are comparable."""

    __tablename__ = "evaluations"
    __table_args__ = (Index(None, "model", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(255))  # teacher:NAME or run:ID
    metric: Mapped[str] = mapped_column(String(64))  # fid, kid, precision, recall, ms_per_sample...
    value: Mapped[float]
    n: Mapped[int]                                   # samples measured
    extractor: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str] = mapped_column(String(255))  # the reference statistics (dataset, resolution, n)
    seed: Mapped[int] = mapped_column(BigInteger)    # first seed
    steps: Mapped[int]
    nfe: Mapped[int]                                 # network evaluations per sample (CFG doubles them)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))  # the evaluate run
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Last because migration 0006 added them (the columns keep its order). The seeds drawn were seed .. seed_last;
    # reference_hash is ReferenceStats.content_hash of the statistics measured against (NULL: unknown, or no reference),
    # so two rows with one reference key but different features never pass as comparable.
    seed_last: Mapped[int] = mapped_column(BigInteger)
    reference_hash: Mapped[str | None] = mapped_column(String(80))
    # Migration 0007: the prompts a text-to-image model drew (a built-in set's name, or a prompt file's path and
    # "sha256:" + 12 hex digits of its bytes); '' for models that take no prompts.
    prompts: Mapped[str] = mapped_column(String(1024), default="")


class ReferenceStats(Base):
    """Cached features of a reference dataset (real digits, or points drawn from a toy mixture): computed once per
    (dataset, extractor, resolution, n) and reused by every evaluation against it. The .npz file holds the features
    (for KID and precision/recall) and their mean and covariance (for FID)."""

    __tablename__ = "reference_stats"
    __table_args__ = (UniqueConstraint("dataset", "extractor", "resolution", "n"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset: Mapped[str] = mapped_column(String(64))    # digits, toy2d-ring, toy2d-grid
    extractor: Mapped[str] = mapped_column(String(64))
    resolution: Mapped[int]                             # image side in pixels; 0 for points
    n: Mapped[int]                                      # reference items
    path: Mapped[str] = mapped_column(String(1024))     # the .npz, relative to the data dir
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # "sha256:" + 12 hex digits of the features (workers/reference.py): the key names how the statistics were made, the
    # hash what they are, so a file recomputed with other extractor weights is told apart. NULL: unknown.
    content_hash: Mapped[str | None] = mapped_column(String(80))


# -- Blind A/B studies (docs/study.md#blind-ab-study) ---------------------------------------------------------------

class Study(Base):
    """A blind comparison of variants (the teacher and students) on fixed conditions and seeds."""

    __tablename__ = "studies"
    __table_args__ = (CheckConstraint(_in("status", STUDY_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft: pool not built; open: rating; closed
    teacher: Mapped[str] = mapped_column(String(64))  # the anchor's teacher name
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # classes, seeds, quota, undo_s, gold/repeat rates...
    salt: Mapped[str] = mapped_column(String(64))     # for rater pseudonyms in exports
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class StudyVariant(Base):
    """One frozen generator in a study: a model reference at a step count and checkpoint. Never sent to a rater."""

    __tablename__ = "study_variants"
    __table_args__ = (UniqueConstraint("study_id", "model", "steps", "checkpoint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(255))   # teacher:NAME or run:ID
    steps: Mapped[int]
    checkpoint: Mapped[int] = mapped_column(default=0)
    label: Mapped[str] = mapped_column(String(255))   # for researchers' reports only
    is_teacher: Mapped[bool] = mapped_column(default=False)


class StudyPair(Base):
    """Two blind images of one condition and seed; sides are drawn per assignment. Gold pairs carry their answer."""

    __tablename__ = "study_pairs"
    __table_args__ = (CheckConstraint(_in("kind", PAIR_KINDS), name="kind"), Index(None, "study_id", "kind"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="normal")
    variant_a_id: Mapped[int | None] = mapped_column(ForeignKey("study_variants.id", ondelete="CASCADE"))
    variant_b_id: Mapped[int | None] = mapped_column(ForeignKey("study_variants.id", ondelete="CASCADE"))
    image_a: Mapped[str] = mapped_column(String(1024))  # blind copy, relative to the data dir: random name, no metadata
    image_b: Mapped[str] = mapped_column(String(1024))
    condition: Mapped[str] = mapped_column(String(255))  # class id or prompt, the bootstrap's cluster
    condition_text: Mapped[str] = mapped_column(Text, default="")  # what the rater reads ("the digit 3")
    seed: Mapped[int] = mapped_column(BigInteger)
    gold_expected: Mapped[dict[str, Any] | None]      # gold only: {criterion: [correct choices in a/b terms]}
    repeat_of: Mapped[int | None] = mapped_column(ForeignKey("study_pairs.id", ondelete="CASCADE"))


class Assignment(Base):
    """One showing of a pair to a rater; the browser holds only its opaque token."""

    __tablename__ = "study_assignments"
    __table_args__ = (Index(None, "study_id", "rater", "completed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    pair_id: Mapped[int] = mapped_column(ForeignKey("study_pairs.id", ondelete="CASCADE"))
    rater: Mapped[str] = mapped_column(String(64))
    a_on_left: Mapped[bool]                            # the fair coin of docs/study.md#blinding
    sampling_weight: Mapped[float] = mapped_column(default=1.0)
    seq: Mapped[int] = mapped_column(default=0)        # position in the rater's queue
    served_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


class Vote(Base):
    """One answer of one rater to one criterion of one pair (docs/study.md#the-vote-record). Undo retracts; nothing is deleted."""

    __tablename__ = "votes"
    __table_args__ = (
        CheckConstraint(_in("criterion", CRITERIA), name="criterion"),
        CheckConstraint(_in("choice", CHOICES), name="choice"),
        # One live vote per rater x pair x criterion, enforced by the database (partial: retracted votes step aside).
        Index("uq_votes_live", "rater", "pair_id", "criterion", unique=True,
              sqlite_where=text("retracted_at IS NULL"), postgresql_where=text("retracted_at IS NULL")),
        Index(None, "study_id", "criterion"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # UUID
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    pair_id: Mapped[int] = mapped_column(ForeignKey("study_pairs.id", ondelete="CASCADE"))
    assignment_id: Mapped[int] = mapped_column(ForeignKey("study_assignments.id", ondelete="CASCADE"))
    condition: Mapped[str] = mapped_column(String(255))
    seed: Mapped[int] = mapped_column(BigInteger)
    criterion: Mapped[str] = mapped_column(String(16))
    choice: Mapped[str] = mapped_column(String(16))    # as displayed: left, right, tie, both_bad
    left_variant_id: Mapped[int | None] = mapped_column(ForeignKey("study_variants.id", ondelete="SET NULL"))
    right_variant_id: Mapped[int | None] = mapped_column(ForeignKey("study_variants.id", ondelete="SET NULL"))
    rater: Mapped[str] = mapped_column(String(64))
    session_hash: Mapped[str] = mapped_column(String(64), default="")
    served_at: Mapped[datetime]
    voted_at: Mapped[datetime]
    client_ms_after_load: Mapped[float | None]
    seq_in_session: Mapped[int] = mapped_column(default=0)
    fullscreen_used: Mapped[bool] = mapped_column(default=False)
    slider_used: Mapped[bool] = mapped_column(default=False)
    is_gold: Mapped[bool] = mapped_column(default=False)
    gold_expected: Mapped[str | None] = mapped_column(String(64))  # displayed-side answers, e.g. "left" or "tie|both_bad"
    repeat_of: Mapped[int | None] = mapped_column(ForeignKey("study_pairs.id", ondelete="SET NULL"))
    sampling_weight: Mapped[float] = mapped_column(default=1.0)
    app_version: Mapped[str] = mapped_column(String(32), default="")
    retracted_at: Mapped[datetime | None]
