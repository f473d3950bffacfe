"""Evaluation prompts: evaluations.prompts, the prompt set a text-to-image model was evaluated on.

Every stored evaluation so far is of a model that takes no prompts (text-to-image models could not be evaluated), so
existing rows get '' (no prompts).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("prompts", sa.String(1024), nullable=True))
    op.execute("UPDATE evaluations SET prompts = ''")
    with op.batch_alter_table("evaluations") as batch:  # batch: SQLite alters a column by copying the table
        batch.alter_column("prompts", existing_type=sa.String(1024), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("prompts")
