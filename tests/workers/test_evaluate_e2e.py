"""The evaluate job end to end: `distill-studio evaluate --submit`, a real worker on Redis, a real database; the run
ends succeeded with its evaluation rows, its reference statistics cached, and `leaderboard` lists what it measured.
See conftest.py and harness.py."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from storage import repo
from storage.db import session_scope
from storage.models import Evaluation, ReferenceStats

from .harness import Studio

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("database", BACKENDS)
def test_an_evaluate_job_ends_succeeded_with_its_rows(make_studio, database):
    studio: Studio = make_studio(database=database)
    out = json.loads(studio.cli("evaluate", "--model", "teacher:toy2d-ring@4", "--model", "teacher:toy2d-ring@50",
                                "--metrics", "fid,kid,modes,speed", "--n", "256", "--submit", "--json").stdout)
    assert (out["kind"], out["status"]) == ("evaluate", "queued")
    run_id = out["id"]
    studio.start_worker()
    run = studio.wait_status(run_id, "succeeded", timeout=120)
    assert (run.step, run.total, run.attempts, run.error, run.lease_owner) == (512, 512, 1, None, None)

    with session_scope(studio.factory) as session:
        rows = [(e.model, e.steps, e.nfe, e.metric, e.n, e.extractor, e.reference, e.run_id)
                for e in session.scalars(select(Evaluation).order_by(Evaluation.id))]
        references = [(r.dataset, r.extractor, r.resolution, r.n, r.path) for r in session.scalars(select(ReferenceStats))]
    metrics = ["fid", "kid", "ms_per_image", "images_per_s", "modes_covered", "modes_quality"]
    assert rows == [("teacher:toy2d-ring", steps, steps, metric, 256, "toy2d", "toy2d-ring-toy2d-0-256", run_id)
                    for steps in (4, 50) for metric in metrics]
    assert references == [("toy2d-ring", "toy2d", 0, 256, "reference/toy2d-ring-toy2d-0-256.npz")]
    assert (studio.data_dir / references[0][4]).is_file()
    result = json.loads((studio.data_dir / run.out_dir / "evaluation.json").read_text())
    assert [(m["model"], m["steps"]) for m in result["models"]] == [("teacher:toy2d-ring", 4), ("teacher:toy2d-ring", 50)]

    board = json.loads(studio.cli("leaderboard", "--json").stdout)
    assert [(r["model"], r["steps"]) for r in board["rows"]] == [("teacher:toy2d-ring", 50), ("teacher:toy2d-ring", 4)]
    assert [nfe for nfe, _ in board["fid_vs_nfe"]["teacher:toy2d-ring"]] == [4, 50]


def test_a_cancelled_evaluation_resumes_without_measuring_a_model_twice(studio: Studio):
    # The toy teacher takes a second, the digits teacher seconds per batch: cancel once the first model is stored.
    out = json.loads(studio.cli("evaluate", "--model", "teacher:toy2d-ring@50", "--model", "teacher:digits@25",
                                "--metrics", "fid,speed", "--n", "300", "--submit", "--json").stdout)
    run_id = out["id"]
    studio.start_worker(OMP_NUM_THREADS="1")  # see one_thread in test_evaluate.py
    studio.wait_for(run_id, lambda r: r.step >= 300, "the first model measured")
    with session_scope(studio.factory) as session:  # at once: the digits teacher's first batch is still sampling
        assert repo.request_cancel(session=session, run_id=run_id)
    studio.wait_status(run_id, "cancelled", timeout=60)

    def stored() -> list[tuple[str, str, int]]:
        with session_scope(studio.factory) as session:
            return [(e.model, e.metric, e.id) for e in session.scalars(select(Evaluation).where(Evaluation.run_id == run_id)
                                                                         .order_by(Evaluation.id))]

    before = stored()
    assert [(model, metric) for model, metric, _ in before] == [
        ("teacher:toy2d-ring", metric) for metric in ("fid", "ms_per_image", "images_per_s")]
    studio.cli("runs", "resume", str(run_id))
    run = studio.wait_status(run_id, "succeeded", timeout=120)
    assert (run.step, run.total, run.attempts) == (600, 600, 2)
    after = stored()
    assert after[:3] == before  # kept, not measured again
    assert [(model, metric) for model, metric, _ in after[3:]] == [
        ("teacher:digits", metric) for metric in ("fid", "ms_per_image", "images_per_s")]
    result = json.loads((studio.data_dir / run.out_dir / "evaluation.json").read_text())
    assert [m.get("resumed", False) for m in result["models"]] == [True, False]
