"""The Leaderboard tab's handlers as plain functions (docs/study.md#handlers-first): the board from recorded
evaluations and queueing an evaluate run, against a real migrated SQLite database and the embedded SQLite broker in a
temporary data dir."""

from __future__ import annotations

import pytest

from app.studio import leaderboard
from storage import repo
from storage.db import session_scope
from tests.app.studio_ctx import all_runs, broker_messages, create

# -- Leaderboard ----------------------------------------------------------------------------------------------

def _evaluate(ctx, model: str, metric: str, value: float, steps: int, nfe: int, run_id: int | None = None,
              n: int = 1000, reference_hash: str | None = "sha256:0123456789ab") -> None:
    with session_scope(ctx.factory) as session:
        repo.record_evaluation(session=session, model=model, metric=metric, value=value, n=n, extractor="digits-cnn",
                               reference="digits-train", reference_hash=reference_hash, seed=0, seed_last=n - 1,
                               steps=steps, nfe=nfe, run_id=run_id)


def test_board_shapes_the_leaderboard(ctx):
    run_id = create(ctx, spec={"teacher": "digits", "method": "dmd2", "student_steps": 1})
    sample = create(ctx, "sample", {"model": "teacher:digits", "seeds": [0]})
    _evaluate(ctx, "teacher:digits", "fid", 3.21, 50, 50)
    _evaluate(ctx, "teacher:digits", "fid", 20.0, 4, 4)
    _evaluate(ctx, f"run:{run_id}", "fid", 12.345678, 1, 1, run_id)
    _evaluate(ctx, f"run:{run_id}", "kid", 0.0123456789, 1, 1, run_id)
    _evaluate(ctx, f"run:{run_id}", "ms_per_image", 0.5, 1, 1, run_id)
    _evaluate(ctx, f"run:{sample}", "fid", 30.0, 1, 1)  # not a distill run: shown by its reference
    table, plot = leaderboard.board(ctx)
    assert list(table.columns) == leaderboard.COLUMNS
    name = f"run:{run_id} dmd2-1 of digits"
    assert table["model"].tolist() == ["teacher:digits", name, "teacher:digits", f"run:{sample}"]  # by FID
    row = table[table["model"] == name].iloc[0].to_dict()
    assert {k: row[k] for k in ("steps", "NFE", "FID", "KID", "ms/image", "n", "reference")} == {
        "steps": 1, "NFE": 1, "FID": 12.35, "KID": 0.01235, "ms/image": 0.5, "n": 1000, "reference": "digits-train"}
    assert row["precision"] is None or row["precision"] != row["precision"]  # missing: None or NaN
    assert {k: row[k] for k in ("reference hash", "seeds", "note")} == {
        "reference hash": "sha256:0123456789ab", "seeds": "0-999", "note": "† small-sample estimate: n < 2000"}
    assert sorted(plot.itertuples(index=False, name=None)) == sorted(
        [(4, 20.0, "teacher:digits"), (50, 3.21, "teacher:digits"), (1, 12.345678, name), (1, 30.0, f"run:{sample}")])
    assert [str(t) for t in plot.dtypes] == ["int64", "float64", "object"]


def test_board_labels_small_sample_figures_and_shows_their_reference_hash(ctx):
    _evaluate(ctx, "teacher:digits", "fid", 3.0, 50, 50, n=2000)
    _evaluate(ctx, "teacher:digits", "kid", 0.01, 50, 50, n=500)  # a KID on fewer samples than the row's FID
    _evaluate(ctx, "teacher:digits", "fid", 9.0, 4, 4, n=1999, reference_hash=None)  # a row whose hash is unknown
    table, _ = leaderboard.board(ctx)
    rows = {r["steps"]: r for r in table.to_dict("records")}
    assert {k: rows[50][k] for k in ("n", "reference", "reference hash", "seeds")} == {
        "n": 2000, "reference": "digits-train", "reference hash": "sha256:0123456789ab", "seeds": "0-1999"}
    assert rows[50]["note"] == ("† kid: n=500, extractor digits-cnn, reference digits-train sha256:0123456789ab, seeds 0-499; "
                                "small-sample estimate: n < 2000")  # the FID at n = 2000 carries no label
    assert {k: rows[4][k] for k in ("n", "reference hash", "seeds", "note")} == {
        "n": 1999, "reference hash": "hash unknown", "seeds": "0-1998", "note": "† small-sample estimate: n < 2000"}
    assert leaderboard.MARKER in leaderboard.LEGEND and "small-sample estimate: n < 2000" in leaderboard.LEGEND


def test_board_of_an_empty_store(ctx):
    table, plot = leaderboard.board(ctx)
    assert table.empty and list(table.columns) == leaderboard.COLUMNS
    assert plot is None  # no value at all: a plot given an empty frame never draws later points


@pytest.mark.parametrize("models, metrics, n, field", [
    ([], ["speed"], 100, "models"),
    (["teacher:toy2d-ring@4"], [], 100, "metrics"),
    (["teacher:toy2d-ring@4"], ["speed"], None, "n"),
    (["teacher:toy2d-ring@4"], ["speed"], 99.5, "n"),
    (["teacher:toy2d-ring@4"], ["speed"], 1, "n"),
    (["teacher:toy2d-ring@4"], ["no-such-metric"], 100, "metrics"),
    (["run:999"], ["speed"], 100, "model"),
    (["teacher:no-such-teacher"], ["speed"], 100, "model"),
])
def test_queue_evaluation_errors_name_the_field(ctx, models, metrics, n, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        leaderboard.queue_evaluation(ctx, "local", models, metrics, n)
    assert all_runs(ctx) == []


def test_queue_evaluation_writes_an_evaluate_run(ctx):
    message = leaderboard.queue_evaluation(ctx, "local", ["teacher:toy2d-ring@4"], ["speed"], 100.0)
    [run] = all_runs(ctx)
    assert message.startswith(f"Evaluation run {run.id} queued (1 model(s), n = 100)")
    assert (run.kind, run.status, run.spec["models"], run.spec["metrics"], run.spec["n"]) == (
        "evaluate", "queued", ["teacher:toy2d-ring@4"], ["speed"], 100)
    assert broker_messages(ctx) == 1


def test_model_choices_offer_teachers_and_succeeded_runs(ctx, students):
    refs = [ref for _, ref in leaderboard.model_choices(ctx)]
    assert "teacher:digits@4" in refs and "teacher:toy2d-ring@50" in refs
    assert not any(ref.startswith("teacher:toy2d-ring-gmm") for ref in refs)  # analytic
    assert [ref for ref in refs if ref.startswith("run:")] == [students[0]]
