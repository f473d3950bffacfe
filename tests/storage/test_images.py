"""The sample key includes the checkpoint step (docs/study.md#the-sample-key): migration 0004, record_image, find_images and
checkpoint_steps, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage import repo
from storage.db import make_engine, session_scope
from storage.migrate import alembic_config, current_revision
from storage.models import Image

SPEC = {"teacher": "digits", "method": "dmd2"}


def _migrate(url: str, revision: str, downgrade: bool = False) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        (command.downgrade if downgrade else command.upgrade)(alembic_config(connection), revision)
    engine.dispose()


def _rows(url: str, sql: str) -> list[tuple]:
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = [tuple(r) for r in connection.execute(text(sql))]
    engine.dispose()
    return rows


def _execute(url: str, sql: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text(sql))
    engine.dispose()


# -- migration 0004 --------------------------------------------------------------------------------------------

def test_0004_keys_existing_images_by_their_runs_final_step_and_downgrades(new_database):
    url = new_database()
    _migrate(url, "0003")
    _execute(url, "INSERT INTO runs (id, kind, spec, status, step, attempts, cancel_requested) VALUES "
                  "(1, 'distill', '{}', 'succeeded', 40, 1, false), (2, 'distill', '{}', 'failed', 7, 1, false), "
                  "(3, 'sample', '{}', 'succeeded', 2, 1, false)")
    _execute(url, "INSERT INTO images (id, model, seed, class_id, prompt, steps, path) VALUES "
                  "(1, 'teacher:digits', 0, 3, '', 50, 'a.png'), (2, 'run:1', 0, 3, '', 1, 'b.png'), "
                  "(3, 'run:2', 0, 3, '', 1, 'c.png'), (4, 'run:x', 0, 3, '', 1, 'd.png')")
    _migrate(url, "0004")
    assert _rows(url, "SELECT id, checkpoint FROM images ORDER BY id") == [(1, 0), (2, 40), (3, 0), (4, 0)]

    # From 0004 the same sample at another checkpoint is a row of its own; the downgrade keeps the newest per 0003 key.
    _execute(url, "INSERT INTO images (id, model, seed, class_id, prompt, steps, path, checkpoint) VALUES "
                  "(5, 'run:1', 0, 3, '', 1, 'e.png', 20)")
    _migrate(url, "0003", downgrade=True)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert current_revision(connection) == "0003"
    engine.dispose()
    assert _rows(url, "SELECT id, path FROM images ORDER BY id") == [(1, "a.png"), (3, "c.png"), (4, "d.png"), (5, "e.png")]
    with pytest.raises(IntegrityError, match="uq_images|UNIQUE constraint failed: images"):
        _execute(url, "INSERT INTO images (id, model, seed, class_id, prompt, steps, path) VALUES "
                      "(6, 'run:1', 0, 3, '', 1, 'f.png')")


# -- the key and the queries -----------------------------------------------------------------------------------

def test_an_image_is_unique_per_checkpoint_too(db):
    def image(**kw) -> Image:
        return Image(**{"model": "run:1", "seed": 17, "steps": 1, "path": "images/a.png", **kw})

    with session_scope(db) as s:
        s.add_all([image(), image(checkpoint=10), image(checkpoint=20)])
    with session_scope(db) as s:
        assert sorted(s.scalars(text("SELECT checkpoint FROM images"))) == [0, 10, 20]
    with pytest.raises(IntegrityError, match="uq_images|UNIQUE constraint failed: images"), session_scope(db) as s:
        s.add(image(checkpoint=10, path="images/b.png"))
    with pytest.raises(IntegrityError, match="ck_images_checkpoint|CHECK constraint failed"), session_scope(db) as s:
        s.add(image(checkpoint=-1))


def test_record_image_and_find_images_by_checkpoint(db):
    with session_scope(db) as s:
        for checkpoint in (10, 20):
            for seed in (0, 1, 2):
                repo.record_image(session=s, model="run:1", seed=seed, class_id=3, steps=1, checkpoint=checkpoint,
                                  path=f"runs/5/c{checkpoint}-s{seed}.png")
        repo.record_image(session=s, model="run:1", seed=0, class_id=None, steps=1, checkpoint=10, path="u.png")
        repo.record_image(session=s, model="teacher:digits", seed=0, class_id=3, steps=50, path="t.png")
        # The same key again only moves the path.
        repo.record_image(session=s, model="run:1", seed=1, class_id=3, steps=1, checkpoint=20, path="moved.png", run_id=None)
    with session_scope(db) as s:
        at_20 = repo.find_images(session=s, model="run:1", steps=1, checkpoint=20, class_id=3, seeds=[2, 1, 0, 9])
        assert {seed: image.path for seed, image in at_20.items()} == {0: "runs/5/c20-s0.png", 1: "moved.png",
                                                                       2: "runs/5/c20-s2.png"}
        at_10 = repo.find_images(session=s, model="run:1", steps=1, checkpoint=10, class_id=3, seeds=range(3))
        assert sorted(image.path for image in at_10.values()) == [f"runs/5/c10-s{i}.png" for i in range(3)]
        assert [i.path for i in repo.find_images(session=s, model="run:1", steps=1, checkpoint=10, class_id=None,
                                                 seeds=[0]).values()] == ["u.png"]
        teacher = repo.find_images(session=s, model="teacher:digits", steps=50, checkpoint=0, class_id=3, seeds=[0])
        assert teacher[0].checkpoint == 0 and teacher[0].path == "t.png"
        assert repo.find_images(session=s, model="run:1", steps=1, checkpoint=30, class_id=3, seeds=[0]) == {}
        assert repo.find_images(session=s, model="run:1", steps=1, checkpoint=10, class_id=3, seeds=[]) == {}
        many = repo.find_images(session=s, model="run:1", steps=1, checkpoint=10, class_id=3, seeds=range(1200))
        assert sorted(many) == [0, 1, 2]  # more seeds than one IN list holds
    with pytest.raises(ValueError, match=r"^checkpoint: must be a training step >= 0, got -1$"), session_scope(db) as s:
        repo.record_image(session=s, model="run:1", seed=0, class_id=3, steps=1, checkpoint=-1, path="x.png")


def test_checkpoint_steps_are_the_recorded_checkpoints_plus_the_final_step(db):
    with session_scope(db) as s:
        run_id = repo.create_run(session=s, kind="distill", spec=SPEC, total=40).id
        other = repo.create_run(session=s, kind="distill", spec=SPEC, total=40).id
        assert repo.checkpoint_steps(session=s, run_id=run_id) == []
        assert repo.claim_run(session=s, run_id=run_id, worker="w", lease_s=60)
        for step in (30, 10, 20):
            repo.record_checkpoint(session=s, run_id=run_id, step=step, path=f"runs/{run_id}/checkpoints/{step}")
        repo.record_checkpoint(session=s, run_id=other, step=5, path="runs/x/5")
        assert repo.heartbeat(session=s, run_id=run_id, worker="w", lease_s=60, step=38)
    with session_scope(db) as s:
        assert repo.checkpoint_steps(session=s, run_id=run_id) == [10, 20, 30]  # running: no final step yet
        assert repo.heartbeat(session=s, run_id=run_id, worker="w", lease_s=60, step=40)
        assert repo.finish_run(session=s, run_id=run_id, worker="w", status="succeeded")
    with session_scope(db) as s:
        assert repo.checkpoint_steps(session=s, run_id=run_id) == [10, 20, 30, 40]
        repo.record_checkpoint(session=s, run_id=run_id, step=40, path=f"runs/{run_id}/checkpoints/40")
        assert repo.checkpoint_steps(session=s, run_id=run_id) == [10, 20, 30, 40]
        assert repo.checkpoint_steps(session=s, run_id=other) == [5]
        assert repo.checkpoint_steps(session=s, run_id=999) == []
