"""Blind A/B studies (docs/study.md#blind-ab-study): studies, their variants, the pool of pairs, assignments (showings) and votes.

One live vote per rater x pair x criterion is a partial unique index (retracted votes step aside), on SQLite and
PostgreSQL alike.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "retracted_at IS NULL"


def _id(table: str, type_: sa.types.TypeEngine = sa.Integer()) -> tuple[sa.Column, sa.PrimaryKeyConstraint]:
    return sa.Column("id", type_, nullable=False), sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}"))


def _fk(table: str, column: str, target: str, ondelete: str, nullable: bool = False) -> sa.Column:
    fk = sa.ForeignKey(f"{target}.id", ondelete=ondelete, name=op.f(f"fk_{table}_{column}_{target}"))
    return sa.Column(column, sa.Integer(), fk, nullable=nullable)


def _check(table: str, name: str, column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=op.f(f"ck_{table}_{name}"))


def _cols(*specs: tuple[str, sa.types.TypeEngine, bool]) -> list[sa.Column]:
    return [sa.Column(name, type_, nullable=nullable) for name, type_, nullable in specs]


def upgrade() -> None:
    op.create_table(
        "studies", *_id("studies"),
        *_cols(("name", sa.String(128), False), ("status", sa.String(16), False), ("teacher", sa.String(64), False),
               ("config", sa.JSON(), False), ("salt", sa.String(64), False), ("created_by", sa.String(64), False)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        _check("studies", "status", "status", ("draft", "open", "closed")),
        sa.UniqueConstraint("name", name=op.f("uq_studies_name")),
    )
    op.create_table(
        "study_variants", *_id("study_variants"), _fk("study_variants", "study_id", "studies", "CASCADE"),
        *_cols(("model", sa.String(255), False), ("steps", sa.Integer(), False), ("checkpoint", sa.Integer(), False),
               ("label", sa.String(255), False), ("is_teacher", sa.Boolean(), False)),
        sa.UniqueConstraint("study_id", "model", "steps", "checkpoint",
                            name=op.f("uq_study_variants_study_id_model_steps_checkpoint")),
    )
    op.create_table(
        "study_pairs", *_id("study_pairs"), _fk("study_pairs", "study_id", "studies", "CASCADE"),
        sa.Column("kind", sa.String(16), nullable=False),
        _fk("study_pairs", "variant_a_id", "study_variants", "CASCADE", nullable=True),
        _fk("study_pairs", "variant_b_id", "study_variants", "CASCADE", nullable=True),
        *_cols(("image_a", sa.String(1024), False), ("image_b", sa.String(1024), False),
               ("condition", sa.String(255), False), ("condition_text", sa.Text(), False), ("seed", sa.BigInteger(), False),
               ("gold_expected", sa.JSON(), True)),
        _fk("study_pairs", "repeat_of", "study_pairs", "CASCADE", nullable=True),
        _check("study_pairs", "kind", "kind", ("normal", "gold_broken", "gold_identical", "repeat")),
    )
    op.create_index(op.f("ix_study_pairs_study_id_kind"), "study_pairs", ["study_id", "kind"])
    op.create_table(
        "study_assignments", *_id("study_assignments"), sa.Column("token", sa.String(64), nullable=False),
        _fk("study_assignments", "study_id", "studies", "CASCADE"),
        _fk("study_assignments", "pair_id", "study_pairs", "CASCADE"),
        *_cols(("rater", sa.String(64), False), ("a_on_left", sa.Boolean(), False), ("sampling_weight", sa.Double(), False),
               ("seq", sa.Integer(), False), ("served_at", sa.DateTime(timezone=True), False),
               ("completed_at", sa.DateTime(timezone=True), True)),
        sa.UniqueConstraint("token", name=op.f("uq_study_assignments_token")),
    )
    op.create_index(op.f("ix_study_assignments_study_id_rater_completed_at"), "study_assignments",
                    ["study_id", "rater", "completed_at"])
    op.create_table(
        "votes", *_id("votes", sa.String(36)),
        _fk("votes", "study_id", "studies", "CASCADE"), _fk("votes", "pair_id", "study_pairs", "CASCADE"),
        _fk("votes", "assignment_id", "study_assignments", "CASCADE"),
        *_cols(("condition", sa.String(255), False), ("seed", sa.BigInteger(), False), ("criterion", sa.String(16), False),
               ("choice", sa.String(16), False)),
        _fk("votes", "left_variant_id", "study_variants", "SET NULL", nullable=True),
        _fk("votes", "right_variant_id", "study_variants", "SET NULL", nullable=True),
        *_cols(("rater", sa.String(64), False), ("session_hash", sa.String(64), False),
               ("served_at", sa.DateTime(timezone=True), False), ("voted_at", sa.DateTime(timezone=True), False),
               ("client_ms_after_load", sa.Double(), True), ("seq_in_session", sa.Integer(), False),
               ("fullscreen_used", sa.Boolean(), False), ("slider_used", sa.Boolean(), False),
               ("is_gold", sa.Boolean(), False), ("gold_expected", sa.String(64), True)),
        _fk("votes", "repeat_of", "study_pairs", "SET NULL", nullable=True),
        *_cols(("sampling_weight", sa.Double(), False), ("app_version", sa.String(32), False),
               ("retracted_at", sa.DateTime(timezone=True), True)),
        _check("votes", "criterion", "criterion", ("quality", "alignment")),
        _check("votes", "choice", "choice", ("left", "right", "tie", "both_bad")),
    )
    op.create_index(op.f("ix_votes_study_id_criterion"), "votes", ["study_id", "criterion"])
    op.create_index("uq_votes_live", "votes", ["rater", "pair_id", "criterion"], unique=True,
                    sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))


def downgrade() -> None:
    for table in ("votes", "study_assignments", "study_pairs", "study_variants", "studies"):
        op.drop_table(table)
