"""Export runs: runs.kind may be 'export' (a finished student written as a diffusers pipeline by a queued job).

Only the kind's CHECK constraint changes; existing rows are untouched.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "kind IN ('teacher', 'distill', 'sample', 'evaluate')"
AFTER = "kind IN ('teacher', 'distill', 'sample', 'evaluate', 'export')"


def _kinds(check: str) -> None:
    # batch: SQLite changes a CHECK constraint by copying the table; the name follows the metadata's naming convention
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(op.f("ck_runs_kind"), type_="check")  # op.f: the name as stored, not re-conventioned
        batch.create_check_constraint("kind", check)


def upgrade() -> None:
    _kinds(AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM runs WHERE kind = 'export'")  # rows the older schema cannot hold
    _kinds(BEFORE)
