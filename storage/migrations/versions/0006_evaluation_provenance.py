"""Evaluation provenance: evaluations.seed_last and evaluations.reference_hash, reference_stats.content_hash.

Every stored evaluation drew the consecutive seeds seed .. seed + n - 1, so existing rows get that last seed. Their
reference hash and every existing reference's content hash stay NULL (unknown): the features they were measured on
are not known for certain any more; a reference gets its hash the next time an evaluation uses it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("seed_last", sa.BigInteger(), nullable=True))
    op.add_column("evaluations", sa.Column("reference_hash", sa.String(80), nullable=True))
    op.execute("UPDATE evaluations SET seed_last = seed + n - 1")
    with op.batch_alter_table("evaluations") as batch:  # batch: SQLite alters a column by copying the table
        batch.alter_column("seed_last", existing_type=sa.BigInteger(), nullable=False)
    op.add_column("reference_stats", sa.Column("content_hash", sa.String(80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reference_stats") as batch:
        batch.drop_column("content_hash")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("reference_hash")
        batch.drop_column("seed_last")
