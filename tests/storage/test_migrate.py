"""Migrations: an empty database becomes exactly the models' schema, and upgrading again changes nothing."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from storage.db import make_engine
from storage.migrate import alembic_config, upgrade
from storage.models import Base

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema(url: str) -> dict[str, dict]:
    """Everything the database says about our tables: columns, keys, indexes, unique and check constraints."""
    engine = make_engine(url)
    inspector = inspect(engine)
    tables = {}
    for name in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        tables[name] = {
            "columns": [(c["name"], repr(c["type"]), c["nullable"], c["default"]) for c in inspector.get_columns(name)],
            "pk": inspector.get_pk_constraint(name)["constrained_columns"],
            "fks": sorted((fk["name"], *fk["constrained_columns"], fk["referred_table"], str(fk["options"]))
                          for fk in inspector.get_foreign_keys(name)),
            "indexes": sorted((i["name"], *i["column_names"], i["unique"]) for i in inspector.get_indexes(name)),
            "uniques": sorted((u["name"], *u["column_names"]) for u in inspector.get_unique_constraints(name)),
            "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(name)),
        }
    engine.dispose()
    return tables


def autogenerate_diff(url: str) -> list:
    """What `alembic check` would find missing: the models against the database, server defaults included."""
    engine = make_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_server_default": True}),
                                Base.metadata)
    engine.dispose()
    return diff


def test_upgrade_creates_exactly_the_models_schema(new_database, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no alembic.ini needed, wherever we run from
    migrated, created = new_database(), new_database()
    result = upgrade(migrated)
    assert (result.before, result.after) == (None, HEAD)
    assert autogenerate_diff(migrated) == []

    engine = make_engine(created)
    Base.metadata.create_all(engine)
    engine.dispose()
    expected = schema(created)
    assert set(expected) == {"teachers", "runs", "metrics", "checkpoints", "images", "evaluations",
                             "reference_stats", "studies", "study_variants", "study_pairs", "study_assignments", "votes"}
    assert schema(migrated) == expected


def test_upgrading_twice_is_a_no_op(new_database):
    url = new_database()
    upgrade(url)
    before = schema(url)
    result = upgrade(url)
    assert (result.before, result.after) == (HEAD, HEAD)
    assert schema(url) == before


def _upgrade_from(url: str, revision: str, *inserts: str) -> None:
    """Migrate a new database to `revision`, write rows there as that revision's code did, then upgrade to the head."""
    engine = make_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)
        for insert in inserts:
            connection.execute(text(insert))
    engine.dispose()
    result = upgrade(url)
    assert (result.before, result.after) == (revision, HEAD)


def test_0006_gives_existing_evaluations_their_seed_range_and_an_unknown_reference_hash(new_database):
    url = new_database()
    _upgrade_from(url, "0005",
                  "INSERT INTO evaluations (model, metric, value, n, extractor, reference, seed, steps, nfe) VALUES "
                  "('teacher:digits', 'fid', 0.5, 500, 'digits', 'digits-digits-16-500', 7, 4, 4)",
                  "INSERT INTO reference_stats (dataset, extractor, resolution, n, path) VALUES "
                  "('digits', 'digits', 16, 500, 'reference/digits-digits-16-500.npz')")
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT model, value, n, seed, seed_last, reference, reference_hash "
                                       "FROM evaluations")).all()
        references = connection.execute(text("SELECT path, content_hash FROM reference_stats")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("teacher:digits", 0.5, 500, 7, 506, "digits-digits-16-500", None)]
    assert [tuple(r) for r in references] == [("reference/digits-digits-16-500.npz", None)]


def test_0007_gives_existing_evaluations_no_prompt_set_and_downgrades(new_database):
    url = new_database()
    _upgrade_from(url, "0006",
                  "INSERT INTO evaluations (model, metric, value, n, extractor, reference, seed, seed_last, steps, nfe) "
                  "VALUES ('teacher:digits', 'fid', 0.5, 500, 'digits', 'digits-digits-16-500', 7, 506, 4, 4)")
    engine = make_engine(url)
    with engine.begin() as connection:
        rows = connection.execute(text("SELECT model, seed_last, prompts FROM evaluations")).all()
        connection.execute(text(
            "INSERT INTO evaluations (model, metric, value, n, extractor, reference, seed, seed_last, steps, nfe, "
            "prompts) VALUES ('teacher:shapes', 'alignment', 0.9, 10, '', '', 0, 9, 4, 4, 'shapes-test')"))
        with pytest.raises(IntegrityError), connection.begin_nested():  # the column is NOT NULL
            connection.execute(text("UPDATE evaluations SET prompts = NULL"))
        command.downgrade(alembic_config(connection), "0006")
        columns = [c["name"] for c in inspect(connection).get_columns("evaluations")]
        kept = connection.execute(text("SELECT model FROM evaluations ORDER BY id")).scalars().all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("teacher:digits", 506, "")]
    assert "prompts" not in columns and "seed_last" in columns and kept == ["teacher:digits", "teacher:shapes"]


@pytest.mark.postgres
def test_the_password_is_masked_in_the_result(postgres):
    url = postgres.create().replace("postgres@", "postgres:hunter2@")  # trust auth ignores the password
    assert "hunter2" not in upgrade(url).database


@pytest.mark.postgres
def test_concurrent_upgrades_on_postgres_wait_for_each_other(postgres):
    url, results, errors = postgres.create(), [], []

    def run() -> None:
        try:
            results.append(upgrade(url))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted((r.before or "", r.after) for r in results) == [("", HEAD)] + [(HEAD, HEAD)] * 3


def test_0008_lets_runs_be_exports_and_downgrades(new_database):
    url = new_database()
    _upgrade_from(url, "0007", "INSERT INTO runs (kind, spec, status, step, attempts, cancel_requested) VALUES "
                               "('distill', '{}', 'succeeded', 0, 1, false)")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO runs (kind, spec, status, step, attempts, cancel_requested) VALUES "
                                "('export', '{}', 'queued', 0, 0, false)"))
        with pytest.raises(IntegrityError), connection.begin_nested():  # still a closed list
            connection.execute(text("INSERT INTO runs (kind, spec, status, step, attempts, cancel_requested) VALUES "
                                    "('bake', '{}', 'queued', 0, 0, false)"))
        command.downgrade(alembic_config(connection), "0007")
        kinds = connection.execute(text("SELECT kind FROM runs ORDER BY id")).scalars().all()
        with pytest.raises(IntegrityError), connection.begin_nested():
            connection.execute(text("INSERT INTO runs (kind, spec, status, step, attempts, cancel_requested) VALUES "
                                    "('export', '{}', 'queued', 0, 0, false)"))
    engine.dispose()
    assert kinds == ["distill"]  # the export row went with the downgrade
