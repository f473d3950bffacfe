"""Evaluation in the foreground (workers/evaluate.py, workers/reference.py): reference statistics are computed once and
reused, more teacher steps give a lower FID, the digits teacher draws the classes it is asked for, every stored row
carries what it was measured against, a resumed evaluation measures nothing twice, and bad input names its field.

On a real SQLite file and a real PostgreSQL database where the database is involved; CPU, toy2d with n = 256 and
digits with a few hundred samples, so the whole file takes seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from core.data import DIGITS_SIZE, digits_tensors
from core.eval_specs import REFERENCE_DATA, check_metrics, stored_metrics
from core.metrics import EXTRACTORS
from core.refs import parse_ref
from storage import repo
from storage.db import make_engine, make_session_factory, session_scope
from storage.migrate import upgrade
from storage.models import Evaluation, ReferenceStats
from workers.evaluate import evaluate
from workers.reference import features_digest, reference_samples, reference_stats
from workers.submit import _total, validate_spec

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
TOY = ["teacher:toy2d-ring@4", "teacher:toy2d-ring@50"]
TOY_METRICS = "fid,kid,precision,recall,modes,speed"
TOY_STORED = ["fid", "kid", "precision", "recall", "density", "coverage", "ms_per_image", "images_per_s",
              "modes_covered", "modes_quality"]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=BACKENDS)
def db(request, data_dir):
    """A session factory on a freshly migrated database: a SQLite file in the data dir, or a new PostgreSQL one."""
    url = f"sqlite:///{data_dir / 'studio.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres").create()
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def one_thread():
    """One torch thread for the digits UNet: on a shared 2-core machine, two spinning OpenMP threads next to another
    busy process sampled 10x slower than one (measured: 72 s against 5 s for 100 samples at 50 steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(factory) -> list[Evaluation]:
    with session_scope(factory) as session:
        return repo.list_evaluations(session=session)


def _count(factory, model) -> int:
    with session_scope(factory) as session:
        return session.scalar(select(func.count()).select_from(model))


# -- the torch-free rules agree with the metrics library -----------------------------------------------------

def test_reference_data_matches_the_extractors_and_the_digits():
    for data in REFERENCE_DATA.values():
        assert all(EXTRACTORS[name].kind == data.kind for name in data.extractors), data
    digits = REFERENCE_DATA["digits"]
    assert (digits.size, digits.resolution) == (len(digits_tensors()[0]), DIGITS_SIZE)
    assert EXTRACTORS["digits"].resolution == DIGITS_SIZE


def test_refs_and_metrics_parse():
    assert (parse_ref("teacher:digits@8").kind, parse_ref("teacher:digits@8").target) == ("teacher", "digits")
    assert (parse_ref("teacher:digits").steps, parse_ref("run:7@2").steps, parse_ref("runs/7").kind) == (None, 2, "folder")
    assert (parse_ref("a@b/student@4").target, parse_ref("a@b/student@4").steps) == ("a@b/student", 4)
    assert (parse_ref("me@home").target, parse_ref("me@home").steps) == ("me@home", None)
    assert check_metrics(["FID, kid", "fid"]) == ("fid", "kid")
    assert stored_metrics(["recall", "speed"]) == ("precision", "recall", "density", "coverage", "ms_per_image",
                                                   "images_per_s")


# -- reference statistics ------------------------------------------------------------------------------------

def test_a_second_evaluation_reuses_the_reference_statistics(db, data_dir):
    first = reference_stats("toy2d-ring", None, 256, data_dir=data_dir, session_factory=db)
    assert (first.cached, first.key, first.extractor) == (False, "toy2d-ring-toy2d-0-256", "toy2d")
    assert first.path == (data_dir / "reference" / "toy2d-ring-toy2d-0-256.npz").resolve()
    assert first.features.shape == (256, 2)
    np.testing.assert_allclose(first.mu, first.features.mean(0), rtol=1e-5)
    assert first.digest == features_digest(first.features) and len(first.digest) == len("sha256:") + 12
    with session_scope(db) as session:
        row = repo.get_reference_stats(session=session, dataset="toy2d-ring", extractor="toy2d", resolution=0, n=256)
        assert (row.path, row.content_hash) == ("reference/toy2d-ring-toy2d-0-256.npz", first.digest)
        row.content_hash = None  # a row whose hash is unknown is hashed when its file is next read
    written = first.path.stat().st_mtime_ns

    time.sleep(0.01)
    second = reference_stats("toy2d-ring", "toy2d", 256, data_dir=data_dir, session_factory=db)
    assert second.cached and second.path.stat().st_mtime_ns == written and second.digest == first.digest
    with session_scope(db) as session:
        assert repo.get_reference_stats(session=session, dataset="toy2d-ring", extractor="toy2d", resolution=0,
                                        n=256).content_hash == first.digest
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.sigma, first.sigma)

    # An evaluation against the same reference reads it too; another n is another reference.
    result = evaluate(["teacher:toy2d-ring-gmm@8"], ["fid"], 256, data_dir=data_dir, session_factory=db)
    assert result["models"][0]["reference_cached"] is True and first.path.stat().st_mtime_ns == written
    assert reference_stats("toy2d-ring", None, 128, data_dir=data_dir, session_factory=db).cached is False
    assert _count(db, ReferenceStats) == 2


def test_a_missing_or_broken_reference_file_is_computed_again(data_dir):
    first = reference_stats("toy2d-grid", None, 64, data_dir=data_dir)  # no database: the file alone is the cache
    assert reference_stats("toy2d-grid", None, 64, data_dir=data_dir).cached
    first.path.write_bytes(b"not an npz")
    again = reference_stats("toy2d-grid", None, 64, data_dir=data_dir)
    assert not again.cached and again.path == first.path
    np.testing.assert_array_equal(again.features, first.features)  # a fixed seed: the same points
    first.path.unlink()
    assert not reference_stats("toy2d-grid", None, 64, data_dir=data_dir).cached


@pytest.mark.usefixtures("one_thread")
def test_the_digits_reference_is_a_fixed_subset_of_the_real_digits(data_dir):
    x = reference_samples("digits", 300)
    assert x.shape == (300, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert (reference_samples("digits", 1797).sort(0).values == digits_tensors()[0].sort(0).values).all()  # all of them
    ref = reference_stats("digits", None, 300, data_dir=data_dir)
    assert (ref.key, ref.features.shape) == ("digits-digits-16-300", (300, EXTRACTORS["digits"].dims))
    with pytest.raises(ValueError, match=r"^n: 1798 is larger than the digits reference \(1797 images\)"):
        reference_stats("digits", None, 1798, data_dir=data_dir)


# -- evaluate ------------------------------------------------------------------------------------------------

def test_more_teacher_steps_give_a_lower_fid_and_every_row_says_what_it_measured(db, data_dir):
    seen = []
    result = evaluate(TOY, TOY_METRICS, 256, seed=3, data_dir=data_dir, session_factory=db,
                      progress=lambda done, total: seen.append((done, total)))
    four, fifty = result["models"]
    assert (four["steps"], four["nfe"], fifty["steps"], fifty["nfe"]) == (4, 4, 50, 50)
    assert fifty["values"]["fid"] < four["values"]["fid"]
    assert fifty["values"]["modes_covered"] == 8 and fifty["values"]["modes_quality"] > 0.9
    assert 0 <= fifty["values"]["recall"] <= 1 and fifty["values"]["images_per_s"] > 0
    assert seen[-1] == (512, 512) and seen == sorted(seen)
    assert result["metrics"] == TOY_STORED

    digest = reference_stats("toy2d-ring", None, 256, data_dir=data_dir).digest
    for measured in (four, fifty):
        assert {k: measured[k] for k in ("n", "reference_hash", "seed_first", "seed_last", "small_sample")} == \
            {"n": 256, "reference_hash": digest, "seed_first": 3, "seed_last": 258, "small_sample": True}

    rows = _rows(db)
    assert sorted((r.steps, r.metric) for r in rows) == sorted((s, m) for s in (4, 50) for m in TOY_STORED)
    for row in rows:
        measured = four if row.steps == 4 else fifty
        assert (row.model, row.n, row.extractor, row.reference, row.seed, row.nfe, row.run_id) == \
            ("teacher:toy2d-ring", 256, "toy2d", "toy2d-ring-toy2d-0-256", 3, row.steps, None)
        assert (row.seed_last, row.reference_hash) == (258, digest)  # seeds 3 .. 3 + 256 - 1
        assert row.value == pytest.approx(measured["values"][row.metric]) and row.created_at is not None
    with session_scope(db) as session:
        board = repo.leaderboard(session=session)
    assert [(r["model"], r["steps"]) for r in board["rows"]] == [("teacher:toy2d-ring", 50), ("teacher:toy2d-ring", 4)]
    assert board["fid_vs_nfe"] == {"teacher:toy2d-ring": [[4, four["values"]["fid"]], [50, fifty["values"]["fid"]]]}


@pytest.mark.usefixtures("one_thread")
def test_the_digits_teacher_draws_the_class_each_seed_asks_for(data_dir):
    result = evaluate(["teacher:digits@50"], ["accuracy", "fid"], 100, data_dir=data_dir)
    values = result["models"][0]["values"]
    assert values["accuracy"] >= 0.9
    assert values["fid"] >= 0 and result["models"][0]["reference"] == "digits-digits-16-100"


@pytest.mark.usefixtures("one_thread")
def test_guidance_doubles_the_nfe_and_names_the_model(db, data_dir):
    result = evaluate(["teacher:digits@4"], "accuracy", 20, guidance=2.0, data_dir=data_dir, session_factory=db)
    model = result["models"][0]
    assert (model["model"], model["steps"], model["nfe"], model["reference"]) == ("teacher:digits+cfg2", 4, 8, "")
    assert (model["reference_hash"], model["small_sample"], model["seed_last"]) == (None, None, 19)  # no reference
    (row,) = _rows(db)
    assert (row.metric, row.nfe, row.extractor, row.reference) == ("accuracy", 8, "digits", "")
    assert (row.seed, row.seed_last, row.reference_hash) == (0, 19, None)


def test_a_resumed_evaluation_measures_only_what_is_missing(db, data_dir):
    with session_scope(db) as session:
        run_id = repo.create_run(session=session, kind="evaluate", spec={}).id
    evaluate(TOY[:1], "fid,modes", 256, data_dir=data_dir, session_factory=db, run_id=run_id)
    stored = {(r.model, r.steps, r.metric): r.value for r in _rows(db)}
    result = evaluate(TOY, "fid,modes", 256, data_dir=data_dir, session_factory=db, run_id=run_id)
    assert [m.get("resumed", False) for m in result["models"]] == [True, False]
    assert result["models"][0]["values"]["fid"] == stored[("teacher:toy2d-ring", 4, "fid")]
    resumed, measured = result["models"]
    provenance = ("n", "extractor", "reference", "reference_hash", "seed_first", "seed_last", "small_sample")
    assert {k: resumed[k] for k in provenance} == {k: measured[k] for k in provenance}  # read back from its rows
    rows = _rows(db)
    assert len(rows) == 6 and {r.run_id for r in rows} == {run_id}  # three values per model, none twice


def test_students_are_evaluated_from_their_folder_or_their_run(db, data_dir):
    from workers.local import distill

    with session_scope(db) as session:
        run = repo.create_run(session=session, kind="distill", spec={})
        run_id, out_dir = run.id, run.out_dir
    distill("toy2d-ring", "dmd2", data_dir / out_dir, preset="toy2d", iterations=20, data_dir=data_dir)
    with pytest.raises(ValueError, match=rf"^model: run {run_id} has not succeeded \(status queued\)"):
        evaluate([f"run:{run_id}"], "fid", 64, data_dir=data_dir, session_factory=db)
    with session_scope(db) as session:
        assert repo.claim_run(session=session, run_id=run_id, worker="test", lease_s=60)
        assert repo.finish_run(session=session, run_id=run_id, worker="test", status="succeeded")

    result = evaluate([f"run:{run_id}", str(data_dir / out_dir)], "fid,speed", 64, data_dir=data_dir, session_factory=db)
    by_run, by_folder = result["models"]
    assert (by_run["model"], by_run["steps"], by_run["nfe"]) == (f"run:{run_id}", 1, 1)
    assert by_folder["model"] == str((data_dir / out_dir).resolve())
    assert by_run["values"]["fid"] == by_folder["values"]["fid"]  # the same student, the same seeds
    # dmd2 samples at any step count
    two = evaluate([f"run:{run_id}@2"], "fid", 64, data_dir=data_dir, session_factory=db)["models"][0]
    assert (two["model"], two["steps"], two["nfe"]) == (f"run:{run_id}", 2, 2)


@pytest.mark.parametrize(("refs", "metrics", "n", "kwargs", "error"), [
    (["teacher:toy2d-ring"], "fid,sharpness", 256, {}, r"^metrics: unknown metric 'sharpness' \(known: fid, kid"),
    (["teacher:toy2d-ring"], "", 256, {}, r"^metrics: give at least one"),
    (["teacher:digits"], "fid", 1798, {}, r"^n: 1798 is larger than the digits reference \(1797 images\)"),
    (["teacher:toy2d-ring"], "fid", 5, {}, r"^n: Input should be greater than or equal to 10"),
    (["teacher:nope@50"], "fid", 256, {}, r"^model: unknown name 'nope'"),
    (["teacher:toy2d-ring@0"], "fid", 256, {}, r"^model: 'teacher:toy2d-ring@0' has a bad step count '0'"),
    (["run:seven"], "fid", 256, {}, r"^model: 'run:seven' is not run:ID"),
    (["run:7"], "fid", 256, {}, r"^model: run 7 is not a distill run"),
    (["no/such/folder"], "fid", 256, {}, r"^model: 'no/such/folder' is neither teacher:NAME\[@STEPS\], run:ID nor"),
    ([], "fid", 256, {}, r"^models: "),
    (["teacher:toy2d-ring"], "accuracy", 256, {}, r"^metrics: accuracy needs a class-conditional digits model"),
    (["teacher:digits"], "modes", 256, {}, r"^metrics: modes is for toy2d models"),
    (["teacher:toy2d-ring"], "fid", 256, {"extractor": "digits"}, r"^extractor: 'digits' does not apply to toy2d-ring"),
    (["teacher:toy2d-ring"], "fid", 256, {"guidance": 2.0}, r"^guidance: 'toy2d-ring' is unconditional"),
])
def test_bad_input_is_refused_naming_the_field_before_any_work(db, data_dir, refs, metrics, n, kwargs, error):
    with pytest.raises(ValueError, match=error):
        evaluate(refs, metrics, n, data_dir=data_dir, session_factory=db, **kwargs)
    assert _rows(db) == [] and not (data_dir / "reference").exists()


# -- the job's spec ------------------------------------------------------------------------------------------

def test_an_evaluate_spec_is_normalised_for_the_worker(db, data_dir, tmp_path, monkeypatch):
    from workers.local import distill

    distill("toy2d-ring", "dmd2", tmp_path / "student", preset="toy2d", iterations=5, data_dir=data_dir)
    monkeypatch.chdir(tmp_path)
    spec = {"models": ["teacher:toy2d-ring@4", "student"], "metrics": ["FID", "modes,speed"], "n": 256}
    with session_scope(db) as session:
        clean = validate_spec("evaluate", spec, data_dir=data_dir, session=session)
    assert clean == {"models": ["teacher:toy2d-ring@4", str((tmp_path / "student").resolve())],
                     "metrics": ["fid", "modes", "speed"], "n": 256, "seed": 0, "extractor": None, "guidance": 1.0,
                     "prompts": None}
    assert _total("evaluate", clean) == 512
    json.dumps(clean)  # stored on the run row
    with pytest.raises(ValueError, match=r"^metrics: unknown metric 'is'"), session_scope(db) as session:
        validate_spec("evaluate", {**spec, "metrics": ["fid", "is"]}, data_dir=data_dir, session=session)
    with pytest.raises(ValueError, match=r"^extra: Extra inputs are not permitted"), session_scope(db) as session:
        validate_spec("evaluate", {**spec, "extra": 1}, data_dir=data_dir, session=session)

    # A one-step generator is refused at any other step count (checked on its student.json, without torch).
    emd = tmp_path / "emd"
    emd.mkdir()
    (emd / "model.safetensors").write_bytes(b"")
    (emd / "student.json").write_text(json.dumps({"teacher": "toy2d-ring", "method": "emd", "config": {"student_steps": 1}}))
    with pytest.raises(ValueError, match=r"^model: 'emd@2' is a one-step emd generator; evaluate it at @1"), \
            session_scope(db) as session:
        validate_spec("evaluate", {**spec, "models": ["emd@2"]}, data_dir=data_dir, session=session)
    with session_scope(db) as session:
        assert validate_spec("evaluate", {**spec, "models": ["emd@1"]}, data_dir=data_dir,
                             session=session)["models"] == [f"{emd.resolve()}@1"]
