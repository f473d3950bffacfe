"""Alembic environment, driven by storage.migrate with a live connection (no alembic.ini, no offline mode)."""

from __future__ import annotations

from alembic import context

from storage.models import Base, UTCDateTime


def render_item(type_: str, obj, autogen_context) -> str | bool:
    """Write UTCDateTime as the plain column type it stores, so revisions never import the models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=Base.metadata, render_item=render_item,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters a table by copying it
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
