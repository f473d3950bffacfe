"""images.checkpoint: the training step of the weights that drew a sample, part of the sample key (docs/study.md#the-sample-key).

Teachers' images get 0; images of a succeeded distill run (sampled from its final model, the only one sampleable
before this revision) get the run's final step.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KEY = ("model", "seed", "class_id", "prompt", "steps")


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:  # batch: SQLite alters tables by copying them
        batch.add_column(sa.Column("checkpoint", sa.Integer(), server_default="0", nullable=False))
        batch.drop_constraint(op.f("uq_images_model_seed_class_id_prompt_steps"), type_="unique")
        batch.create_unique_constraint(op.f("uq_images_model_seed_class_id_prompt_steps_checkpoint"),
                                       [*OLD_KEY, "checkpoint"])
        batch.create_check_constraint(op.f("ck_images_checkpoint"), "checkpoint >= 0")
    op.execute("UPDATE images SET checkpoint = COALESCE((SELECT runs.step FROM runs WHERE runs.kind = 'distill' "
               "AND runs.status = 'succeeded' AND 'run:' || CAST(runs.id AS VARCHAR(20)) = images.model), 0) "
               "WHERE images.model LIKE 'run:%'")


def downgrade() -> None:
    # The old key holds one image per (model, seed, class, prompt, steps): keep the newest of each.
    columns = ", ".join(OLD_KEY)
    op.execute(f"DELETE FROM images WHERE id NOT IN (SELECT MAX(id) FROM images GROUP BY {columns})")
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint(op.f("ck_images_checkpoint"), type_="check")
        batch.drop_constraint(op.f("uq_images_model_seed_class_id_prompt_steps_checkpoint"), type_="unique")
        batch.create_unique_constraint(op.f("uq_images_model_seed_class_id_prompt_steps"), list(OLD_KEY))
        batch.drop_column("checkpoint")
