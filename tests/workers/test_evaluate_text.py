"""Evaluation of text-to-image models (workers/evaluate.py, core/eval_prompts.py): a tiny random SD teacher and a
student of it draw seed s's prompt from a built-in shapes set (alignment, FID against the rendered scenes of exactly
the seeds drawn, speed) or from a prompt file (alignment, speed); every row names its prompt set, a resumed run reads
it back, and bad input is refused naming the field before any work.

On a real SQLite file and a real PostgreSQL database (tests/workers/conftest.py `jobs_db`); n = 10-12 at 1-2 steps.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sqlalchemy import select

from core.eval_prompts import EvalPrompts, set_scenes
from core.shapes import evaluation_scenes, render
from core.teachers.imported import import_folder
from storage import repo
from storage.db import session_scope
from storage.models import ReferenceStats
from tests.tiny_pipelines import SHAPES_PROMPTS, save_tiny_sd, write_prompts, write_shapes_prompts
from workers.evaluate import evaluate, generate
from workers.reference import reference_samples, reference_stats
from workers.submit import check_evaluate

METRICS = "alignment,fid,speed"
STORED = {"alignment", "alignment_all", "fid", "ms_per_image", "images_per_s"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """The tiny SD pipeline, a prompt file of shapes captions, and a 2-iteration dmd2 student of the teacher."""
    from workers.local import distill

    root = tmp_path_factory.mktemp("t2i-eval")
    pipeline, prompts = save_tiny_sd(root / "sd"), write_shapes_prompts(root / "shapes.txt")
    import_folder(pipeline, "sd-tiny", root / "data")
    distill("sd-tiny", "dmd2", root / "student", preset="sd15", iterations=2, batch_size=2, data_dir=root / "data",
            prompts=prompts)
    return SimpleNamespace(root=root, pipeline=pipeline, prompts=prompts, student=str((root / "student").resolve()))


@pytest.fixture
def studio(jobs_db, world):
    """A migrated database and a data dir holding the tiny teacher (the student's teacher: the same weights)."""
    import_folder(world.pipeline, "sd-tiny", jobs_db.data_dir)
    return jobs_db


def _rows(studio, **where):
    with session_scope(studio.factory) as session:
        return [(r.model, r.metric, r.prompts, r.reference) for r in repo.list_evaluations(session=session, **where)]


def _label(path) -> str:
    return f"{path} sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def test_a_teacher_and_its_student_are_measured_on_the_scenes_their_seeds_draw(studio, world):
    with session_scope(studio.factory) as session:
        run_id = repo.create_run(session=session, kind="evaluate", spec={}).id
    run = dict(data_dir=studio.data_dir, session_factory=studio.factory, run_id=run_id, prompts="shapes-test")
    first = evaluate(["teacher:sd-tiny@2"], METRICS, 12, seed=3, **run)["models"][0]
    # The same run again with the student added, as a resumed job would: the teacher is read back, not measured.
    teacher, student = evaluate(["teacher:sd-tiny@2", world.student], METRICS, 12, seed=3, **run)["models"]
    assert teacher["resumed"] and teacher["values"] == pytest.approx(first["values"])
    assert (teacher["model"], teacher["nfe"], student["steps"], student["nfe"]) == ("teacher:sd-tiny", 2, 1, 1)

    key = "shapes-test-seeds3-14-shapes-32-12"  # the set and the seeds drawn: no other seed range shares it
    for m in (first, teacher, student):
        assert (m["prompts"], m["reference"], m["extractor"], m["seed_first"], m["seed_last"]) == \
            ("shapes-test", key, "shapes", 3, 14)
        assert set(m["values"]) == STORED and m["values"]["fid"] >= 0 and m["values"]["images_per_s"] > 0
        assert 0 <= m["values"]["alignment"] <= 1 and 0 <= m["values"]["alignment_all"] <= 1
    assert (student["reference_cached"], student["reference_hash"]) == (True, first["reference_hash"])
    assert sorted(_rows(studio, run_id=run_id)) == sorted(
        (model, metric, "shapes-test", key)
        for model in ("teacher:sd-tiny", world.student) for metric in STORED)
    with session_scope(studio.factory) as session:
        (ref,) = session.scalars(select(ReferenceStats)).all()
        assert (ref.dataset, ref.extractor, ref.resolution, ref.n, ref.path) == (
            "shapes-test-seeds3-14", "shapes", 32, 12, f"reference/{key}.npz")


def test_disjoint_seed_ranges_draw_disjoint_prompts_and_reference_images(studio):
    stream = evaluation_scenes("shapes-test", 30)
    refs = [reference_stats("shapes-test", None, 10, seed=lo, data_dir=studio.data_dir, session_factory=studio.factory)
            for lo in (0, 10, 20)]
    assert [r.key for r in refs] == [f"shapes-test-seeds{lo}-{lo + 9}-shapes-32-10" for lo in (0, 10, 20)]
    assert len({r.digest for r in refs}) == 3 and not any(r.cached for r in refs)
    for lo in (0, 10, 20):
        seeds = range(lo, lo + 10)
        assert EvalPrompts("shapes-test").prompts(seeds) == [s.caption for s in stream[lo:lo + 10]]
        real = np.stack([render(s) for s in stream[lo:lo + 10]])
        assert torch.equal(reference_samples("shapes-test", 10, lo), torch.from_numpy(real).permute(0, 3, 1, 2) / 127.5 - 1)
    assert len({s.caption for s in stream}) == 30  # disjoint seed ranges, disjoint prompts
    held = set_scenes("shapes-heldout", range(5, 10))
    assert held == list(evaluation_scenes("shapes-heldout", 10)[5:])
    assert reference_stats("shapes-heldout", None, 10, seed=0, data_dir=studio.data_dir).key == \
        "shapes-heldout-seeds0-9-shapes-32-10"


def test_a_prompt_file_gives_alignment_and_speed_and_its_rows_name_the_file(studio, world):
    spec = {"models": ["teacher:sd-tiny@1"], "metrics": ["alignment", "speed"], "n": 10, "seed": 2, "guidance": 3.0,
            "prompts": str(world.prompts)}
    result = evaluate(spec["models"], spec["metrics"], 10, seed=2, guidance=3.0, prompts=str(world.prompts),
                      data_dir=studio.data_dir, session_factory=studio.factory)
    (m,) = result["models"]
    label = _label(world.prompts)
    assert (m["model"], m["nfe"], m["prompts"], m["reference"], m["dataset"]) == \
        ("teacher:sd-tiny+cfg3", 2, label, "", "imported")  # a guided step counts 2
    assert set(m["values"]) == {"alignment", "alignment_all", "ms_per_image", "images_per_s"}
    assert 0 <= m["values"]["alignment"] <= 1
    assert sorted(_rows(studio)) == sorted(("teacher:sd-tiny+cfg3", metric, label, "") for metric in m["values"])

    # Seed s draws prompt s % 3, decoded to the teacher's pixels in [-1, 1]; a seed's image does not depend on its batch.
    _, (target,) = check_evaluate(spec, data_dir=studio.data_dir, session=None)
    x, drawn, nfe, _ = generate(target, tuple(range(2, 6)), guidance=3.0, data_dir=studio.data_dir)
    assert drawn == [SHAPES_PROMPTS[s % 3] for s in range(2, 6)] and nfe == 2
    assert x.shape == (4, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    alone, _, _, _ = generate(target, (4,), guidance=3.0, data_dir=studio.data_dir)
    torch.testing.assert_close(alone[0], x[2], atol=1e-4, rtol=0)


def test_the_shapes_teacher_defaults_to_shapes_test_model_by_model(tmp_path):
    base = {"models": ["teacher:shapes@4"], "metrics": ["alignment", "fid"], "n": 20}
    clean, (target,) = check_evaluate(base, data_dir=tmp_path, session=None)  # torch-free: no weights are read
    assert clean["prompts"] is None  # resolved per model, so a digits model can share the spec
    assert (target.prompts, target.dataset, target.extractor) == (EvalPrompts("shapes-test"), "shapes-test", "shapes")
    _, (held,) = check_evaluate({**base, "prompts": "shapes-heldout"}, data_dir=tmp_path, session=None)
    assert (held.prompts.name, held.dataset, held.extractor) == ("shapes-heldout", "shapes-heldout", "shapes")
    _, (shapes, plain) = check_evaluate({**base, "models": ["teacher:shapes", "teacher:digits@4"], "metrics": ["speed"]},
                                        data_dir=tmp_path, session=None)
    assert (shapes.prompts.name, plain.prompts, plain.dataset) == ("shapes-test", None, "digits")


BAD = "a small red circle on the left, on a white background\na purple cat\n"


@pytest.mark.parametrize(("models", "metrics", "kwargs", "error"), [
    (["teacher:digits"], "fid", {"prompts": "shapes-test"},
     r"^prompts: teacher:digits is not a text-to-image model \('digits' takes no prompts\); leave prompts out$"),
    (["teacher:sd-tiny"], "speed", {}, r"^prompts: teacher:sd-tiny is a text-to-image model of 'sd-tiny', which has no "
                                       r"default prompt set; give a built-in set \(shapes-test, shapes-heldout\)"),
    (["teacher:sd-tiny"], "alignment,fid", {"prompts": "{file}"},
     r"^metrics: fid needs reference images; teacher:sd-tiny is evaluated on a prompt file, which has none \(only "
     r"alignment and speed apply"),
    (["teacher:sd-tiny"], "alignment", {"prompts": "{bad}"},
     r"^prompts: \S+bad.txt line 2 is not a shapes caption, which alignment needs \('a purple cat' does not end with"),
    (["teacher:sd-tiny"], "speed", {"prompts": "shapes.txt"},
     r"^prompts: must be a built-in set \(shapes-test, shapes-heldout\) or a prompt file's absolute path"),
    (["teacher:sd-tiny"], "speed", {"prompts": "{missing}"}, r"^prompts: \S+missing.txt cannot be read"),
    (["teacher:digits"], "alignment", {}, r"^metrics: alignment is for text-to-image models on prompts; teacher:digits "
                                          r"is digits$"),
    (["teacher:sd-tiny"], "speed", {"prompts": "shapes-test", "seed": 199_995},
     r"^seed: the built-in prompt sets draw scenes 0 \.\. 199999; seed \+ n is 200005$"),
    (["{student}"], "speed", {"prompts": "shapes-test", "guidance": 2.0}, r"^guidance: students are sampled unguided"),
    (["teacher:toy2d-ring"], "speed", {"guidance": 2.0},
     r"^guidance: 'toy2d-ring' is unconditional; guidance needs a class-conditional or text-to-image teacher$"),
])
def test_bad_input_is_refused_naming_the_field_before_any_work(studio, world, tmp_path, models, metrics, kwargs, error):
    paths = {"file": str(world.prompts), "bad": str(write_prompts(tmp_path / "bad.txt", BAD.splitlines())),
             "missing": str(tmp_path / "missing.txt"), "student": world.student}
    models = [m.format(**paths) for m in models]
    kwargs = {k: v.format(**paths) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=error):
        evaluate(models, metrics, 10, data_dir=studio.data_dir, session_factory=studio.factory, **kwargs)
    assert _rows(studio) == [] and not (studio.data_dir / "reference").exists()
    if kwargs.get("prompts", "").endswith("bad.txt"):  # only alignment reads the grammar: speed takes the file
        check_evaluate({"models": models, "metrics": ["speed"], "n": 10, **kwargs}, data_dir=studio.data_dir,
                       session=None)
