"""A throw-away studio for the handler tests: a data dir with a migrated SQLite database and the embedded SQLite
broker (no server), real Settings read from STUDIO_* variables, and a `Studio` context as `distill-studio up` builds.

Migrating takes seconds, so the tests migrate one template database once and copy it into each test's data dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from app.studio.access import Accounts
from app.studio.context import Studio
from storage.migrate import upgrade
from storage.settings import get_settings
from tests.services import clear_studio_caches

STUDIO_VARIABLES = ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_USERS", "STUDIO_USERS_FILE",
                    "STUDIO_IMPORT_ROOTS", "STUDIO_QUEUE")


def migrated_template(folder: Path) -> Path:
    """An empty studio database at the newest revision, to copy into each test's data dir."""
    path = folder / "studio.db"
    upgrade(f"sqlite:///{path}")
    return path


def use_data_dir(monkeypatch: pytest.MonkeyPatch, data_dir: Path, template: Path | None = None, **env: str):
    """Point STUDIO_* at `data_dir` (with a copy of the migrated `template`) and rebuild the cached settings."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if template is not None:
        shutil.copyfile(template, data_dir / "studio.db")
    for key in STUDIO_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STUDIO_DATA_DIR", str(data_dir))
    for key, value in env.items():
        monkeypatch.setenv(f"STUDIO_{key.upper()}", value)
    clear_studio_caches()
    return get_settings()


def open_studio(accounts: Accounts | None = None) -> Studio:
    return Studio.open(get_settings(), accounts or Accounts(None))


def close_studio(ctx: Studio) -> None:
    ctx.factory.kw["bind"].dispose()
    clear_studio_caches()


def write_png(path: Path, color=(10, 20, 30), size: int = 4) -> Path:
    """A tiny real PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")
    return path
