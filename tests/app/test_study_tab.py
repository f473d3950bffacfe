"""The Study tab's handlers without a browser: a study of the digits teacher is validated, its images drawn by real
sample jobs (run in-process through workers.jobs.execute), its blind pool built, rated by two simulated raters through
storage/votes, and its results and FastChat-shaped export computed."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from PIL import Image

from app.studio import study_pool
from app.studio.study import create_study, export_votes, studies_rows, study_state
from app.studio.study_results import compute, tables
from storage import picking, studies, votes
from storage.artifacts import resolve
from storage.db import session_scope
from storage.models import Run, StudyPair
from tests.app.studio_env import close_studio, migrated_template, open_studio, use_data_dir


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return migrated_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def ctx(tmp_path, monkeypatch, template):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    use_data_dir(monkeypatch, tmp_path / "data", template)
    studio = open_studio()
    yield studio
    close_studio(studio)


GOOD = dict(name="Digits A/B", teacher="digits", teacher_steps="4,50", students=[], classes_text="0-1",
            seeds_text="0-2", pairs=3, gold_pct=25, repeat_pct=0, quota=50)


def _count(ctx, model) -> int:
    with session_scope(ctx.factory) as session:
        return session.query(model).count()


@pytest.mark.parametrize("change, field", [
    ({"name": " "}, "name"),
    ({"teacher": "toy2d-ring"}, "teacher"),
    ({"teacher_steps": "0"}, "teacher steps"),
    ({"classes_text": "0-10"}, "classes"),
    ({"gold_pct": 31}, "gold %"),
    ({"repeat_pct": -1}, "repeat %"),
    ({"pairs": 2.5}, "pairs per model pair"),
    ({"quota": 0}, "quota"),
    ({"teacher_steps": "50"}, "students"),              # one variant only
    ({"students": ["run:99"]}, "students"),             # not a distill run of digits
])
def test_a_bad_study_names_its_field_and_writes_nothing(ctx, change, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        create_study(ctx, "alice", **{**GOOD, **change})
    assert _count(ctx, Run) == 0
    assert studies_rows(ctx) == []


def test_a_study_from_form_to_export(ctx):
    from workers.jobs import execute

    # 1. Create: the anchor is the teacher's most-steps variant; the images come from sample jobs.
    study_id, message = create_study(ctx, "alice", **GOOD)
    assert "2 variants" in message
    with session_scope(ctx.factory) as session:
        variants = studies.study_variants(session=session, study_id=study_id)
        assert [(v.label, v.is_teacher) for v in variants] == [("teacher digits @ 50 steps", True),
                                                              ("teacher digits @ 4 steps", False)]
        jobs = session.query(Run).filter(Run.kind == "sample").all()
        job_ids = [(r.id, r.spec["model"], r.spec["steps"], r.spec["class_id"]) for r in jobs]
    plan = study_pool.Plan.from_config({**GOOD, "variants": ["a", "b"], "pairs_per_model_pair": 3, "gold_rate": 0.25,
                                        "classes": [0, 1], "seeds": [0, 1, 2]})
    assert sorted((m, s, c) for _, m, s, c in job_ids) == [("teacher:digits", 4, 0), ("teacher:digits", 4, 1),
                                                          ("teacher:digits", 50, 0), ("teacher:digits", 50, 1)]
    assert plan.gold_seeds == (3,)  # gold uses seeds after the study's own, so it never breaks the exposure rule
    with pytest.raises(ValueError, match="^study: its images are not all drawn yet"):
        study_pool.build_pool(ctx, study_id)
    assert "drawing images" in study_state(ctx, study_id)[0]

    # 2. Draw the images (a worker would), then build the pool and open the study.
    for run_id, *_ in job_ids:
        assert execute(run_id, "sample") == "succeeded"
    summary, ready, status = study_state(ctx, study_id)
    assert (ready, status) == (True, "draft"), summary
    counts = study_pool.build_pool(ctx, study_id, seed=1)
    assert counts == {"normal": 3, "gold": 2}
    with session_scope(ctx.factory) as session:
        pairs = session.query(StudyPair).filter(StudyPair.study_id == study_id).all()
        assert studies.get_study(session=session, study_id=study_id).status == "open"
        for pair in pairs:
            for image in (pair.image_a, pair.image_b):
                assert image.startswith("blind/") and len(image) == len("blind/") + 32 + 4  # uuid4 hex names
                with Image.open(resolve(ctx.data_dir, image)) as png:
                    assert not png.info and not png.text  # no chunks that could name a model
        gold = [p for p in pairs if p.kind != "normal"]
        assert {p.condition for p in gold} <= {"gold-0", "gold-1"} and all(p.gold_expected for p in gold)
    with pytest.raises(ValueError, match="is open; only a draft"):
        study_pool.build_pool(ctx, study_id)

    # 3. Two raters answer every pair they are given: the 50-step teacher wins quality 80 % of decisive votes.
    rng = random.Random(0)
    for rater in ("rob", "rae"):
        while True:
            with session_scope(ctx.factory) as session:
                assignment = votes.next_assignment(session=session, study_id=study_id, rater=rater, rng=rng)
                if assignment is None:
                    break
                pair = session.get(StudyPair, assignment.pair_id)
                anchor_left = (pair.variant_a_id == variants[0].id) == assignment.a_on_left
                better = "left" if anchor_left else "right"
                worse = "right" if anchor_left else "left"
                quality = better if rng.random() < 0.8 else worse
                votes.record_votes(session=session, token=assignment.token, rater=rater,
                                   answers={"quality": quality, "alignment": "tie"}, client_ms=1500.0)
    rows = studies_rows(ctx)
    assert rows[0][:3] == [study_id, "Digits A/B", "open"] and rows[0][7] == 2

    # 4. Results: the teacher is the anchor at exactly 1000, the 4-step teacher below it, raters diagnosed.
    report = compute(ctx, study_id, n_boot=50)
    shown = tables(report, "quality")
    ratings = shown["ratings"].set_index("variant")
    assert ratings.loc["teacher digits @ 50 steps", "rating"] == 1000.0
    assert ratings.loc["teacher digits @ 4 steps", "rating"] < 1000.0
    assert set(shown["raters"]["rater"]) == {"rob", "rae"}
    assert "votes" in shown["summary"] and not shown["plan"].empty

    # 5. Export: one file per criterion, loadable by pandas, in FastChat's shape; gold only on request.
    csv_files = export_votes(ctx, study_id, "csv", include_gold=False)
    quality = pd.read_csv(next(p for p in csv_files if p.endswith("quality.csv")))
    assert {"model_a", "model_b", "winner", "judge", "tstamp", "question_id", "anony", "criterion", "condition_id",
            "seed", "latency_ms", "is_repeat"} <= set(quality.columns)
    assert set(quality["winner"]) <= {"model_a", "model_b", "tie", "tie (bothbad)"}
    assert not quality["judge"].isin(["rob", "rae"]).any()  # pseudonyms, not account names
    assert len(quality) == 6  # three normal pairs, two raters
    jsonl = export_votes(ctx, study_id, "jsonl", include_gold=True)
    lines = [json.loads(line) for p in jsonl for line in open(p)]
    assert any(row["is_gold"] for row in lines) and len(lines) > 12


def test_adaptive_weights_are_stored_where_assignment_reads_them(ctx):
    """Every 50 answered pairs the study config gets {"A-B": weight} over variant ids from the quality bootstrap, the
    format storage/votes.next_assignment reads; one refresh at a time, never from a request's thread."""
    import threading

    from app.studio import study_weights

    study_id, _ = create_study(ctx, "alice", **{**GOOD, "gold_pct": 0})
    with session_scope(ctx.factory) as session:
        variants = studies.study_variants(session=session, study_id=study_id)
        studies.set_status(session=session, study_id=study_id, status="open")
        for k in range(6):  # a pool written directly: the images' content does not matter to the weights
            studies.add_pair(session=session, study_id=study_id, kind="normal", variant_a_id=variants[0].id,
                             variant_b_id=variants[1].id, image_a=f"blind/a{k}.png", image_b=f"blind/b{k}.png",
                             condition=str(k % 2), condition_text="", seed=k)
    assert study_weights.compute_weights(ctx.factory, study_id) is None  # no votes yet
    rng = random.Random(3)
    for rater in ("r1", "r2", "r3"):
        while True:
            with session_scope(ctx.factory) as session:
                a = votes.next_assignment(session=session, study_id=study_id, rater=rater, rng=rng)
                if a is None:
                    break
                votes.record_votes(session=session, token=a.token, rater=rater,
                                   answers={"quality": rng.choice(["left", "right"]), "alignment": "tie"})
    weights = study_weights.refresh(ctx.factory, study_id)
    key = f"{min(v.id for v in variants)}-{max(v.id for v in variants)}"
    assert list(weights) == [key] and weights[key] > 0
    with session_scope(ctx.factory) as session:
        assert studies.get_study(session=session, study_id=study_id).config["sampling_weights"] == weights
        assert picking.config_weights(studies.get_study(session=session, study_id=study_id)) == \
            {(min(v.id for v in variants), max(v.id for v in variants)): weights[key]}
    assert not study_weights.maybe_refresh(ctx.factory, study_id, 49)
    before = {t.name for t in threading.enumerate()}
    assert study_weights.maybe_refresh(ctx.factory, study_id, 50)
    for thread in threading.enumerate():
        if thread.name == f"weights-{study_id}" and thread.name not in before:
            thread.join(30)
    assert study_id not in study_weights._running


def test_a_prompt_study_of_the_shapes_teacher_shows_raters_the_prompt_and_exports_it(ctx):
    """A text-to-image study: its conditions are prompts, the teacher rows are drawn at its guidance, raters read the
    prompt above the pair, an alignment gold pair sets a right-prompt image against a wrong-prompt one of the same
    teacher, and every exported vote carries its prompt."""
    from workers.jobs import execute

    prompts = ["a small red circle on the left, on a white background", "a large blue square at the top, on a black "
               "background"]
    form = {**GOOD, "name": "Shapes A/B", "teacher": "shapes", "teacher_steps": "2,4", "classes_text": "ignored",
            "seeds_text": "0-1", "prompts_text": "\n".join(prompts), "guidance": 4}
    with pytest.raises(ValueError, match="^prompts: type one or more prompts"):
        create_study(ctx, "alice", **{**form, "prompts_text": " \n"})
    study_id, _ = create_study(ctx, "alice", **form)
    with session_scope(ctx.factory) as session:
        config = studies.get_study(session=session, study_id=study_id).config
        jobs = session.query(Run).filter(Run.kind == "sample").all()
        specs = [r.spec for r in jobs]
    assert (config["prompts"], config["classes"], config["guidance"]) == (prompts, [0, 1], 4.0)
    assert sorted((s["steps"], s["prompts"][0], s["guidance"], s["class_id"]) for s in specs) == sorted(
        (steps, p, 4.0, None) for steps in (2, 4) for p in prompts)
    for run_id in [r.id for r in jobs]:
        assert execute(run_id, "sample") == "succeeded"
    assert study_state(ctx, study_id)[1], study_state(ctx, study_id)[0]
    study_pool.build_pool(ctx, study_id, seed=1)
    with session_scope(ctx.factory) as session:
        pairs = session.query(StudyPair).filter(StudyPair.study_id == study_id).all()
        texts = {p.condition: p.condition_text for p in pairs}
        wrong = [p for p in pairs if p.kind == "gold_broken" and p.variant_b_id is not None]
    assert {texts[c] for c in texts if not c.startswith("gold")} <= {f"the prompt: “{p}”" for p in prompts}
    assert all("teacher" not in t and "shapes" not in t for t in texts.values())  # nothing names a model
    [pair] = wrong  # the right prompt's image against the same teacher's image of the other prompt
    right = prompts[int(pair.condition.removeprefix("gold-"))]
    assert pair.gold_expected == {"alignment": ["a"]} and pair.condition_text == f"the prompt: “{right}”"

    rng = random.Random(0)
    while True:
        with session_scope(ctx.factory) as session:
            assignment = votes.next_assignment(session=session, study_id=study_id, rater="rob", rng=rng)
            if assignment is None:
                break
            votes.record_votes(session=session, token=assignment.token, rater="rob",
                               answers={"quality": "left", "alignment": "right"}, client_ms=900.0)
    lines = [json.loads(line) for p in export_votes(ctx, study_id, "jsonl", include_gold=True) for line in open(p)]
    assert lines and all(row["prompt"] == prompts[int(row["condition_id"].removeprefix("gold-"))] for row in lines)
