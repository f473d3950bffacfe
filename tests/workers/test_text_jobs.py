"""A queued distillation of an imported SD teacher: the spec carries the prompt file (or image folder) by absolute path,
the job trains from it and records which file it read; a second stage starts from the first by run:ID; a spec that
lacks what the method needs is refused before a row is written. A queued evaluation of the teacher and the student
draws its prompts from a file named the same way, and its rows name that file."""

from __future__ import annotations

import hashlib
import json

import pytest

from core.teachers.imported import import_folder
from storage import repo
from storage.db import session_scope
from tests.tiny_pipelines import save_tiny_sd, write_prompts, write_shapes_prompts
from tests.workers.local_jobs import job, validate


def test_a_queued_text_to_image_distillation_trains_from_its_prompt_file(jobs_db, tmp_path):
    import_folder(save_tiny_sd(tmp_path / "sd"), "sd-tiny", jobs_db.data_dir)
    prompts = write_prompts(tmp_path / "prompts.txt")
    spec = {"teacher": "sd-tiny", "method": "dmd2", "preset": "sd15", "iterations": 2, "batch_size": 2,
            "prompts": str(prompts)}
    run_id = job(jobs_db, "distill", spec)
    student = json.loads((jobs_db.data_dir / "runs" / str(run_id) / "student.json").read_text())
    assert student["inputs"]["prompts"] == {"file": str(prompts), "count": 3,
                                            "sha256": hashlib.sha256(prompts.read_bytes()).hexdigest()}
    with session_scope(jobs_db.factory) as s:
        run = repo.get_run(session=s, run_id=run_id)
        assert (run.status, run.spec["prompts"], run.spec["data"]) == ("succeeded", str(prompts), None)

    with pytest.raises(ValueError, match=r"^data: mmd with these settings trains on real images"):
        validate(jobs_db, "distill", {**spec, "method": "mmd", "preset": "default"})
    with pytest.raises(ValueError, match=r"^init: must be run:ID or an absolute path"):
        validate(jobs_db, "distill", {**spec, "init": "runs/1"})
    with pytest.raises(ValueError, match=r"^init: \S+ distilled 'sd-tiny' with 'dmd2'; a run starts only from one of "
                                         r"the same teacher and method \('sd-tiny', 'emd'\)$"):
        validate(jobs_db, "distill", {**spec, "method": "emd", "preset": "default", "init": f"run:{run_id}"})
    with session_scope(jobs_db.factory) as s:
        assert [r.id for r in repo.list_runs(session=s)] == [run_id]  # the refused specs left no row

    # A second stage queued from the first by run:ID: the stored spec names the folder the worker reads.
    second = job(jobs_db, "distill", {**spec, "iterations": 1, "init": f"run:{run_id}"})
    folder = jobs_db.data_dir / "runs" / str(run_id)
    with session_scope(jobs_db.factory) as s:
        assert repo.get_run(session=s, run_id=second).spec["init"] == str(folder)
    started = json.loads((jobs_db.data_dir / "runs" / str(second) / "student.json").read_text())["init"]
    assert (started["from"], started["step"], started["nets"]) == (str(folder), 2, ["student", "fake"])

    # A queued evaluation of the teacher and the first student on a file of shapes captions (absolute, like `prompts`
    # above): every row names the file and its hash; the stored spec re-validates in the worker.
    shapes = write_shapes_prompts(tmp_path / "shapes.txt")
    label = f"{shapes} sha256:{hashlib.sha256(shapes.read_bytes()).hexdigest()[:12]}"
    evaluation = {"models": ["teacher:sd-tiny@1", f"run:{run_id}"], "metrics": ["alignment", "speed"], "n": 10,
                  "prompts": str(shapes)}
    eval_id = job(jobs_db, "evaluate", evaluation)
    with session_scope(jobs_db.factory) as s:
        rows = repo.list_evaluations(session=s, run_id=eval_id)
        assert repo.get_run(session=s, run_id=eval_id).spec["prompts"] == str(shapes)
    assert sorted((r.model, r.metric, r.prompts) for r in rows) == sorted(
        (model, metric, label) for model in ("teacher:sd-tiny", f"run:{run_id}")
        for metric in ("alignment", "alignment_all", "ms_per_image", "images_per_s"))
    assert all(0 <= r.value <= 1 for r in rows if r.metric.startswith("alignment"))
    with pytest.raises(ValueError, match=r"^prompts: must be a built-in set \(shapes-test, shapes-heldout\) or a prompt "
                                         r"file's absolute path"):
        validate(jobs_db, "evaluate", {**evaluation, "prompts": "shapes.txt"})


def test_a_queued_shapes_distillation_trains_on_the_benchmarks_generator(jobs_db):
    """The built-in shapes teacher needs neither a prompt file nor a data folder: a method that needs images (mmd)
    is queued without either and trains on freshly drawn scenes."""
    spec = {"teacher": "shapes", "method": "mmd", "preset": "shapes", "student_steps": 2, "iterations": 2,
            "batch_size": 4}
    run_id = job(jobs_db, "distill", spec)
    student = json.loads((jobs_db.data_dir / "runs" / str(run_id) / "student.json").read_text())
    assert student["inputs"] == {"benchmark": "shapes"} and student["config"]["student_steps"] == 2
    with session_scope(jobs_db.factory) as s:
        assert repo.get_run(session=s, run_id=run_id).status == "succeeded"



def test_a_queued_sample_draws_every_prompt_at_every_seed_and_keeps_each_image_under_its_prompt(jobs_db, tmp_path):
    """What the studio's Compare and Teachers tabs ask of a text-to-image teacher: one job for prompts x seeds, its
    images found again by (model at its guidance, prompt, seed); a student of it is sampled the same way, unguided."""
    import_folder(save_tiny_sd(tmp_path / "sd"), "sd-tiny", jobs_db.data_dir)
    prompts = ["a red circle on the left", "a blue square"]
    run_id = job(jobs_db, "sample", {"model": "teacher:sd-tiny", "seeds": [3, 5], "steps": 2, "guidance": 2.5,
                                     "prompts": prompts})
    with session_scope(jobs_db.factory) as s:
        assert repo.get_run(session=s, run_id=run_id).total == 4
        guided = {p: repo.find_images(session=s, model="teacher:sd-tiny+cfg2.5", steps=2, checkpoint=0, class_id=None,
                                      seeds=[3, 5], prompt=p) for p in prompts}
        plain = repo.find_images(session=s, model="teacher:sd-tiny", steps=2, checkpoint=0, class_id=None,
                                 seeds=[3, 5], prompt=prompts[0])
    assert plain == {}  # drawn with guidance 2.5: never found as the unguided teacher's
    files = {p: {seed: (jobs_db.data_dir / image.path).read_bytes() for seed, image in found.items()}
             for p, found in guided.items()}
    assert all(sorted(found) == [3, 5] for found in files.values())
    assert files[prompts[0]][3] != files[prompts[1]][3] and files[prompts[0]][3] != files[prompts[0]][5]

    # The same prompt and seed again, alone in its job: the same image, since a seed's noise never depends on the batch.
    again = job(jobs_db, "sample", {"model": "teacher:sd-tiny", "seeds": [5], "steps": 2, "guidance": 2.5,
                                    "prompts": [prompts[0]]})
    with session_scope(jobs_db.factory) as s:
        [image] = repo.find_images(session=s, model="teacher:sd-tiny+cfg2.5", steps=2, checkpoint=0, class_id=None,
                                   seeds=[5], prompt=prompts[0]).values()
        assert image.run_id == again
    assert (jobs_db.data_dir / image.path).read_bytes() == files[prompts[0]][5]

    for spec, error in (({"model": "teacher:sd-tiny", "seeds": [0]}, r"^prompts: 'sd-tiny' is a text-to-image teacher"),
                        ({"model": "teacher:digits", "seeds": [0], "prompts": ["x"]},
                         r"^prompts: 'digits' takes classes, not prompts"),
                        ({"model": "teacher:sd-tiny", "seeds": [0], "prompts": ["x"] * 65}, r"^prompts: "),
                        ({"model": "teacher:sd-tiny", "seeds": [0], "prompts": ["ok", "bad\x07"]}, r"^prompt: prompt 2 ")):
        with pytest.raises(ValueError, match=error):
            validate(jobs_db, "sample", spec)


def test_a_queued_export_writes_the_students_pipeline_into_its_run_folder_and_it_loads(jobs_db, tmp_path):
    """What the Runs tab's Export button queues: the same export as `distill-studio export run:ID`, into the export
    run's folder, with the lines that load it; those lines run as written."""
    import numpy as np

    import_folder(save_tiny_sd(tmp_path / "sd"), "sd-tiny", jobs_db.data_dir)
    spec = {"teacher": "sd-tiny", "method": "dmd2", "preset": "sd15", "iterations": 2, "batch_size": 2,
            "prompts": str(write_prompts(tmp_path / "prompts.txt"))}
    student = job(jobs_db, "distill", spec)
    for bad, error in (({"model": "teacher:sd-tiny"}, r"^model: 'teacher:sd-tiny' is a teacher"),
                       ({"model": "run:999"}, r"^model: run 999 is not a distill run"),
                       ({"model": f"run:{student}", "step": 7}, r"^checkpoint: run \d+ has no checkpoint at step 7")):
        with pytest.raises(ValueError, match=error):
            validate(jobs_db, "export", bad)
    export_id = job(jobs_db, "export", {"model": f"run:{student}"})
    folder = jobs_db.data_dir / "runs" / str(export_id)
    summary = json.loads((folder / "export.json").read_text())
    assert summary["out"] == str(folder / "pipeline") and (folder / "pipeline" / "model_index.json").is_file()
    scope: dict = {}
    exec("\n".join(summary["load"]), scope)  # the three lines the studio shows, as a user would paste them
    assert np.asarray(scope["images"][0]).shape == (64, 64, 3)  # the tiny pipeline draws 64 px
    with session_scope(jobs_db.factory) as s:
        run = repo.get_run(session=s, run_id=export_id)
        assert (run.kind, run.status, run.step, run.total) == ("export", "succeeded", 1, 1)
