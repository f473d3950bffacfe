"""STUDIO_DATABASE_URL and STUDIO_BROKER_URL: embedded defaults in the data dir, one-line errors naming the variable."""

from __future__ import annotations

import pytest

from storage.settings import SettingsError, load_settings


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    for name in ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_are_sqlite_files_in_the_data_dir(env, tmp_path):
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'studio.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'data' / 'broker.db'}"


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://studio:s3cret@db:5432/studio", "postgresql+psycopg://studio:s3cret@db:5432/studio"),
    ("postgresql+psycopg://db/studio?sslmode=require", "postgresql+psycopg://db/studio?sslmode=require"),
    ("sqlite:////srv/studio.db", "sqlite:////srv/studio.db"),
])
def test_database_urls_are_pinned_to_our_drivers(env, url, expected):
    env.setenv("STUDIO_DATABASE_URL", url)
    assert load_settings().database_url == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("rediss://:pw@cache:6380/1", "rediss://:pw@cache:6380/1"),
    ("sqla+postgresql://u:pw@db/broker", "sqla+postgresql+psycopg://u:pw@db/broker"),
])
def test_broker_urls(env, url, expected):
    env.setenv("STUDIO_BROKER_URL", url)
    assert load_settings().broker_url == expected


@pytest.mark.parametrize(("variable", "url", "message"), [
    ("STUDIO_DATABASE_URL", "mysql://root:hunter2@db/studio", "unsupported scheme 'mysql' (expected sqlite:///PATH or "
                                                                "postgresql://USER@HOST:PORT/DB)"),
    ("STUDIO_DATABASE_URL", "postgresql+psycopg2://u:hunter2@db/x", "unsupported scheme 'postgresql+psycopg2'"),
    ("STUDIO_DATABASE_URL", "hunter2 is not a url", "not a database URL"),
    ("STUDIO_BROKER_URL", "amqp://guest:hunter2@rabbit//", "unsupported scheme 'amqp'"),
    ("STUDIO_BROKER_URL", "sqla+mysql://u:hunter2@db/x", "unsupported scheme 'mysql'"),
    ("STUDIO_BROKER_URL", "localhost:6379", "not a broker URL"),
])
def test_bad_urls_are_one_line_naming_the_variable(env, variable, url, message):
    env.setenv(variable, url)
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert text.startswith(f"{variable}: {message}")
    assert "\n" not in text and "hunter2" not in text  # one line, and never the password
