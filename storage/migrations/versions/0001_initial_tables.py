"""Initial tables: teachers, runs, metrics, checkpoints, images, evaluations.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Constraint names are spelled out (op.f: final) rather than left to storage.models' naming convention, so this
# revision creates the same schema forever, whatever the models say later.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id(table: str, type_: sa.types.TypeEngine = sa.Integer()) -> tuple[sa.Column, sa.PrimaryKeyConstraint]:
    return sa.Column("id", type_, nullable=False), sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}"))


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _run_id(table: str, ondelete: str, nullable: bool) -> sa.Column:
    fk = sa.ForeignKey("runs.id", ondelete=ondelete, name=op.f(f"fk_{table}_run_id_runs"))
    return sa.Column("run_id", sa.Integer(), fk, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "runs",
        *_id("runs"),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("out_dir", sa.String(1024), nullable=True),
        _created_at(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('teacher', 'distill', 'sample', 'evaluate')", name=op.f("ck_runs_kind")),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_runs_status")),
        sa.CheckConstraint("step >= 0 AND attempts >= 0", name=op.f("ck_runs_counters")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_runs_status_lease_expires_at"), "runs", ["status", "lease_expires_at"])

    op.create_table(
        "teachers",
        *_id("teachers"),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.Column("info", sa.JSON(), nullable=False),
        _run_id("teachers", "SET NULL", nullable=True),
        _created_at(),
        sa.UniqueConstraint("name", name=op.f("uq_teachers_name")),
    )

    op.create_table(
        "metrics",
        *_id("metrics", BIG_ID),
        _run_id("metrics", "CASCADE", nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
    )
    op.create_index(op.f("ix_metrics_run_id_key_step"), "metrics", ["run_id", "key", "step"])

    op.create_table(
        "checkpoints",
        *_id("checkpoints"),
        _run_id("checkpoints", "CASCADE", nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        _created_at(),
        sa.UniqueConstraint("run_id", "step", name=op.f("uq_checkpoints_run_id_step")),
    )

    op.create_table(
        "images",
        *_id("images", BIG_ID),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        _run_id("images", "SET NULL", nullable=True),
        _created_at(),
        sa.UniqueConstraint("model", "seed", "class_id", "prompt", "steps",
                            name=op.f("uq_images_model_seed_class_id_prompt_steps")),
        sa.CheckConstraint("class_id >= -1 AND steps >= 1", name=op.f("ck_images_values")),
    )

    op.create_table(
        "evaluations",
        *_id("evaluations"),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("extractor", sa.String(64), nullable=False),
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("nfe", sa.Integer(), nullable=False),
        _run_id("evaluations", "SET NULL", nullable=True),
        _created_at(),
    )
    op.create_index(op.f("ix_evaluations_model_metric"), "evaluations", ["model", "metric"])


def downgrade() -> None:
    for table in ("evaluations", "images", "checkpoints", "metrics", "teachers", "runs"):
        op.drop_table(table)
