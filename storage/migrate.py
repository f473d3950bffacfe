"""Alembic configured in code: the migrations ship inside the package, so no alembic.ini is needed anywhere.

`upgrade(url)` is what `distill-studio db upgrade` and start-up run; it is a no-op on an up-to-date database.
A new revision after changing storage/models.py: upgrade a scratch database, then, with a connection to it,
`alembic.command.revision(alembic_config(connection), message=..., autogenerate=True)`, and review the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from storage.db import check_connection, make_engine
from storage.urls import display_url

MIGRATIONS = Path(__file__).with_name("migrations")
UPGRADE_LOCK = 0x5354_5544  # any constant: one Postgres advisory lock id shared by every studio process


@dataclass(frozen=True)
class Upgrade:
    database: str        # password masked
    before: str | None   # None: the database was empty
    after: str


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for our migrations; env.py takes the connection from its attributes."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str) -> Upgrade:
    """Migrate the database at `url` to the newest revision, in one transaction where the backend allows it."""
    engine = make_engine(url)
    try:
        check_connection(engine)
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":  # web and workers may all upgrade at once on start-up
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": UPGRADE_LOCK})
            before = current_revision(connection)
            command.upgrade(alembic_config(connection), "head")
            after = current_revision(connection)
    finally:
        engine.dispose()
    assert after is not None, "no migrations found"
    return Upgrade(database=display_url(engine.url), before=before, after=after)
