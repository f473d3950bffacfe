"""The Leaderboard tab's handlers as plain functions (docs/study.md#handlers-first): the board from recorded
evaluations and queueing an evaluate run, against a real migrated SQLite database and the embedded SQLite broker in a
temporary data dir."""

from __future__ import annotations

import json

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
    shown = leaderboard.board(ctx)
    table, plot, references = shown.table, shown.fid, shown.references
    assert list(table.columns) == leaderboard.COLUMNS
    name = f"run:{run_id} dmd2-1 of digits"
    assert table["model"].tolist() == ["teacher:digits", name, "teacher:digits", f"run:{sample}"]  # by FID
    row = table[table["model"] == name].iloc[0].to_dict()
    assert {k: row[k] for k in ("steps", "NFE", "FID", "KID", "ms/image", "n", "reference")} == {
        "steps": 1, "NFE": 1, "FID": 12.35, "KID": 0.01235, "ms/image": 0.5, "n": 1000, "reference": "digits-train"}
    assert row["precision"] is None or row["precision"] != row["precision"]  # missing: None or NaN
    assert {k: row[k] for k in ("reference hash", "seeds", "note")} == {
        "reference hash": "sha256:0123456789ab", "seeds": "0-999", "note": "† small-sample estimate: n < 2000"}
    small = " · n=1000 †"  # every plotted point names its n, and its small-sample mark
    assert sorted(plot.itertuples(index=False, name=None)) == sorted(
        [(4, 20.0, "teacher:digits" + small), (50, 3.21, "teacher:digits" + small), (1, 12.345678, name + small),
         (1, 30.0, f"run:{sample}" + small)])
    assert references == ("FID vs NFE: n = 1000 († small-sample estimate: n < 2000). "
                          "FID measured against: digits-train sha256:0123456789ab.")
    assert [str(t) for t in plot.dtypes] == ["int64", "float64", "object"]


def test_board_labels_small_sample_figures_and_shows_their_reference_hash(ctx):
    _evaluate(ctx, "teacher:digits", "fid", 3.0, 50, 50, n=2000)
    _evaluate(ctx, "teacher:digits", "kid", 0.01, 50, 50, n=500)  # a KID on fewer samples than the row's FID
    _evaluate(ctx, "teacher:digits", "fid", 9.0, 4, 4, n=1999, reference_hash=None)  # a row whose hash is unknown
    table = leaderboard.board(ctx).table
    rows = {r["steps"]: r for r in table.to_dict("records")}
    assert {k: rows[50][k] for k in ("n", "reference", "reference hash", "seeds")} == {
        "n": 2000, "reference": "digits-train", "reference hash": "sha256:0123456789ab", "seeds": "0-1999"}
    assert rows[50]["note"] == ("† kid: n=500, extractor digits-cnn, reference digits-train sha256:0123456789ab, seeds 0-499; "
                                "small-sample estimate: n < 2000")  # the FID at n = 2000 carries no label
    assert {k: rows[4][k] for k in ("n", "reference hash", "seeds", "note")} == {
        "n": 1999, "reference hash": "hash unknown", "seeds": "0-1998", "note": "† small-sample estimate: n < 2000"}
    assert leaderboard.MARKER in leaderboard.LEGEND and "small-sample estimate: n < 2000" in leaderboard.LEGEND


def test_board_of_an_empty_store(ctx):
    table, plot, aligned, references = leaderboard.board(ctx)
    assert table.empty and list(table.columns) == leaderboard.COLUMNS
    assert plot is None and aligned is None  # no value at all: a plot given an empty frame never draws later points
    assert references == ""


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


def test_text_to_image_rows_are_per_prompt_set_with_alignment_and_guided_nfe(ctx):
    with session_scope(ctx.factory) as session:
        for model, steps, nfe, fid, right in (("teacher:shapes+cfg4", 50, 100, 0.107, 0.98),
                                               ("teacher:shapes+cfg4", 4, 8, 0.121, 0.939)):
            for metric, value in (("fid", fid), ("alignment", 0.998), ("alignment_all", right)):
                repo.record_evaluation(session=session, model=model, metric=metric, value=value, n=2000,
                                       extractor="shapes-classifier", reference="shapes-test-2000",
                                       reference_hash="sha256:feedfacecafe", seed=0, seed_last=1999, steps=steps,
                                       nfe=nfe, prompts="shapes-test")
    shown = leaderboard.board(ctx)
    rows = shown.table.to_dict("records")
    assert [(r["model"], r["steps"], r["prompts"], r["NFE"], r["FID"], r["all right"]) for r in rows] == [
        ("teacher:shapes+cfg4", 50, "shapes-test", 100, 0.107, 0.98),
        ("teacher:shapes+cfg4", 4, "shapes-test", 8, 0.121, 0.939)]
    series = "teacher:shapes+cfg4 (shapes-test) · n=2000"
    assert sorted(shown.alignment.itertuples(index=False, name=None)) == [(8, 93.9, series), (100, 98.0, series)]
    assert sorted(shown.fid.itertuples(index=False, name=None)) == [(8, 0.121, series), (100, 0.107, series)]
    assert shown.references == ("FID vs NFE: n = 2000. alignment vs NFE: n = 2000. "
                                "FID measured against: shapes-test-2000 sha256:feedfacecafe.")


def test_a_guided_evaluation_of_teachers_and_students_goes_in_two_jobs(ctx, students):
    done, _ = students
    folder = ctx.data_dir / "runs" / done.removeprefix("run:")  # what a finished run leaves (weights not read here)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "student.json").write_text(json.dumps({"method": "dmd2", "teacher": "digits",
                                                     "config": {"student_steps": 1}}))
    message = leaderboard.queue_evaluation(ctx, "local", ["teacher:digits@4", done], ["accuracy"], 100, None, 2.0)
    jobs = [r for r in all_runs(ctx) if r.kind == "evaluate"]
    assert [(r.spec["models"], r.spec["guidance"]) for r in jobs] == [(["teacher:digits@4"], 2.0), ([done], 1.0)]
    assert message.startswith(f"Evaluation run {jobs[0].id} and run {jobs[1].id} queued (2 model(s), n = 100)")
    assert "(teachers guided, students unguided)" in message
    # One refused spec refuses both: alignment needs prompts, so neither job is queued.
    with pytest.raises(ValueError, match=r"^metrics: alignment is for text-to-image models"):
        leaderboard.queue_evaluation(ctx, "local", ["teacher:digits@4", done], ["alignment"], 100, None, 2.0)
    assert len([r for r in all_runs(ctx) if r.kind == "evaluate"]) == 2


def test_a_text_to_image_teacher_is_evaluated_on_a_chosen_prompt_set(ctx):
    assert "teacher:shapes@50" in [ref for _, ref in leaderboard.model_choices(ctx)]
    leaderboard.queue_evaluation(ctx, "local", ["teacher:shapes@4"], ["alignment", "speed"], 100, "shapes-heldout", 4.0)
    leaderboard.queue_evaluation(ctx, "local", ["teacher:shapes@4"], ["speed"], 100, leaderboard.DEFAULT_PROMPTS, 4.0)
    assert [(r.spec["prompts"], r.spec["guidance"]) for r in all_runs(ctx)] == [("shapes-heldout", 4.0), (None, 4.0)]
