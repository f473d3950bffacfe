"""Evaluations, reference statistics and the leaderboard (storage/repo.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from storage import repo
from storage.db import session_scope
from storage.models import ReferenceStats

REF = "digits-digits-16-500"
REF_HASH = "sha256:0123456789ab"


def _add(session, model, steps, nfe, **values):
    for metric, value in values.items():
        repo.record_evaluation(session=session, model=model, metric=metric, value=value, n=500, extractor="digits",
                               reference=REF, reference_hash=REF_HASH, seed=0, seed_last=499, steps=steps, nfe=nfe)


def test_the_leaderboard_has_one_row_per_model_and_steps_with_the_latest_values(db):
    with session_scope(db) as session:
        _add(session, "teacher:digits", 50, 50, fid=9.0, accuracy=0.97)
        _add(session, "teacher:digits", 4, 4, fid=30.0, ms_per_image=1.5)
        _add(session, "run:3", 1, 1, fid=12.0, kid=0.01)
        _add(session, "teacher:digits", 8, 8, fid=18.0)
        _add(session, "teacher:digits", 50, 50, fid=8.0)  # measured again: the newer value counts
        _add(session, "teacher:digits+cfg2", 8, 16, fid=15.0)
        repo.record_evaluation(session=session, model="teacher:toy2d-ring", metric="ms_per_image", value=0.2, n=256,
                               extractor="toy2d", reference="", reference_hash=None, seed=0, seed_last=255, steps=50,
                               nfe=50)
    with session_scope(db) as session:
        board = repo.leaderboard(session=session)
    rows = board["rows"]
    assert [(r["model"], r["steps"], r["nfe"]) for r in rows] == [
        ("teacher:digits", 50, 50), ("run:3", 1, 1), ("teacher:digits+cfg2", 8, 16), ("teacher:digits", 8, 8),
        ("teacher:digits", 4, 4),
        ("teacher:toy2d-ring", 50, 50)]  # measured without a reference: last
    assert rows[0]["metrics"] == {"accuracy": 0.97, "fid": 8.0}
    assert rows[4]["metrics"] == {"fid": 30.0, "ms_per_image": 1.5}
    assert (rows[0]["n"], rows[0]["extractor"], rows[0]["reference"], rows[0]["seed_first"]) == (500, "digits", REF, 0)
    assert (rows[0]["reference_hash"], rows[0]["seed_last"]) == (REF_HASH, 499)
    own = {"n": 500, "extractor": "digits", "reference": REF, "reference_hash": REF_HASH, "seed_first": 0, "seed_last": 499}
    assert rows[0]["provenance"] == {"accuracy": own, "fid": own}  # every value stored with a reference
    assert (rows[-1]["reference"], rows[-1]["reference_hash"], rows[-1]["provenance"]) == ("", None, {})
    assert all(r["evaluated_at"] for r in rows)
    assert board["fid_vs_nfe"] == {"run:3": [[1, 12.0]], "teacher:digits": [[4, 30.0], [8, 18.0], [50, 8.0]],
                                   "teacher:digits+cfg2": [[16, 15.0]]}


def test_an_empty_leaderboard(db):
    with session_scope(db) as session:
        assert repo.leaderboard(session=session) == {"rows": [], "fid_vs_nfe": {}}


def test_evaluations_are_listed_by_model_and_run(db):
    with session_scope(db) as session:
        run_id = repo.create_run(session=session, kind="evaluate", spec={}).id
        repo.record_evaluation(session=session, model="teacher:digits", metric="fid", value=1.0, n=10, extractor="digits",
                               reference=REF, reference_hash=None, seed=0, seed_last=9, steps=4, nfe=4, run_id=run_id)
        _add(session, "run:1", 1, 1, fid=2.0)
    with session_scope(db) as session:
        assert [e.value for e in repo.list_evaluations(session=session)] == [1.0, 2.0]
        assert [e.model for e in repo.list_evaluations(session=session, run_id=run_id)] == ["teacher:digits"]
        assert [e.value for e in repo.list_evaluations(session=session, model="run:1")] == [2.0]


def test_each_value_keeps_what_it_was_measured_on(db):
    """A row's FID and a later KID on other samples: each figure keeps its own n, reference hash and seed range."""
    with session_scope(db) as session:
        _add(session, "run:3", 1, 1, fid=12.0)
        repo.record_evaluation(session=session, model="run:3", metric="kid", value=0.01, n=1000, extractor="digits",
                               reference="digits-digits-16-1000", reference_hash="sha256:ba9876543210", seed=5,
                               seed_last=1004, steps=1, nfe=1)
    with session_scope(db) as session:
        (row,) = repo.leaderboard(session=session)["rows"]
        (kid,) = repo.list_evaluations(session=session, model="run:3")[1:]
    assert (kid.seed, kid.seed_last, kid.reference_hash) == (5, 1004, "sha256:ba9876543210")
    assert (row["n"], row["seed_first"], row["seed_last"], row["reference_hash"]) == (500, 0, 499, REF_HASH)  # the FID's
    assert row["provenance"]["kid"] == {"n": 1000, "extractor": "digits", "reference": "digits-digits-16-1000",
                                        "reference_hash": "sha256:ba9876543210", "seed_first": 5, "seed_last": 1004}


def test_fids_rank_only_among_rows_measured_on_the_same_reference_features(db):
    with session_scope(db) as session:
        _add(session, "teacher:digits", 4, 4, fid=5.0)
        _add(session, "run:2", 1, 1, fid=3.0)
        repo.record_evaluation(session=session, model="run:1", metric="fid", value=1.0, n=500, extractor="digits",
                               reference=REF, reference_hash=None, seed=0, seed_last=499, steps=1, nfe=1)
    with session_scope(db) as session:
        rows = repo.leaderboard(session=session)["rows"]
    assert [(r["model"], r["reference_hash"]) for r in rows] == [("run:2", REF_HASH), ("teacher:digits", REF_HASH),
                                                                 ("run:1", None)]  # unknown features: after


def test_a_text_to_image_model_has_a_row_and_a_series_per_prompt_set(db):
    with session_scope(db) as session:
        for prompts, fid, alignment in (("shapes-test", 20.0, 0.8), ("shapes-heldout", 30.0, 0.6)):
            for metric, value in (("fid", fid), ("alignment", alignment)):
                repo.record_evaluation(session=session, model="teacher:shapes", metric=metric, value=value, n=500,
                                       extractor="shapes", reference=f"{prompts}-seeds0-499-shapes-32-500",
                                       reference_hash=REF_HASH, seed=0, seed_last=499, steps=4, nfe=4, prompts=prompts)
        _add(session, "teacher:digits", 4, 4, fid=9.0)
    with session_scope(db) as session:
        assert [e.prompts for e in repo.list_evaluations(session=session)] == ["shapes-test"] * 2 + \
            ["shapes-heldout"] * 2 + [""]
        board = repo.leaderboard(session=session)
    rows = {(r["model"], r["prompts"]): r["metrics"] for r in board["rows"]}
    assert rows == {("teacher:shapes", "shapes-test"): {"alignment": 0.8, "fid": 20.0},
                    ("teacher:shapes", "shapes-heldout"): {"alignment": 0.6, "fid": 30.0},
                    ("teacher:digits", ""): {"fid": 9.0}}
    assert board["fid_vs_nfe"] == {"teacher:digits": [[4, 9.0]], "teacher:shapes (shapes-heldout)": [[4, 30.0]],
                                   "teacher:shapes (shapes-test)": [[4, 20.0]]}


def test_a_seed_range_that_ends_before_it_starts_is_refused(db):
    with pytest.raises(ValueError, match=r"^seed_last: 3 is below the first seed 4"), session_scope(db) as session:
        repo.record_evaluation(session=session, model="run:1", metric="fid", value=1.0, n=10, extractor="digits",
                               reference=REF, reference_hash=None, seed=4, seed_last=3, steps=1, nfe=1)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_value_that_is_not_finite_is_refused(db, value):
    with pytest.raises(ValueError, match=r"^fid: value .* is not finite"), session_scope(db) as session:
        _add(session, "teacher:digits", 4, 4, fid=value)


def test_reference_stats_are_unique_by_their_key_and_record_a_relative_path(db):
    key = {"dataset": "digits", "extractor": "digits", "resolution": 16, "n": 500}
    with session_scope(db) as session:
        first = repo.record_reference_stats(session=session, path="reference/a.npz", **key).id
        again = repo.record_reference_stats(session=session, path="reference/b.npz", **key)
        assert (again.id, again.path, again.content_hash) == (first, "reference/b.npz", None)  # not hashed: unknown
        hashed = repo.record_reference_stats(session=session, path="reference/b.npz", content_hash=REF_HASH, **key)
        assert (hashed.id, hashed.content_hash) == (first, REF_HASH)
        moved = repo.record_reference_stats(session=session, path="reference/c.npz", **key)
        assert (moved.path, moved.content_hash) == ("reference/c.npz", REF_HASH)  # moving a file keeps its hash
        assert repo.get_reference_stats(session=session, **{**key, "n": 400}) is None
    with pytest.raises(ValueError, match="must be relative to the data dir"), session_scope(db) as session:
        repo.record_reference_stats(session=session, path="/etc/passwd", **{**key, "n": 1})
    with pytest.raises(IntegrityError), session_scope(db) as session:  # two writers racing on one key: one row wins
        session.add_all([ReferenceStats(path="x.npz", **{**key, "n": 2}), ReferenceStats(path="y.npz", **{**key, "n": 2})])
