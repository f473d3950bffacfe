"""Sampling any saved checkpoint of a student (docs/study.md#the-sample-key, docs/study.md#the-grid): a distill job
leaves a snapshot per checkpoint, a sample job draws the one it is asked for, a running run's too, and every image is
keyed by the step it came from.

Jobs run in this process through workers.jobs.execute (claim, lease, job, terminal status) on a real SQLite or
PostgreSQL database; no broker is involved. Runs are tiny: toy2d-ring for 40 iterations (about 2 s) and digits for 4
iterations at batch 4 (about 5 s), with one torch thread.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from storage import repo
from storage.db import session_scope
from tests.workers.local_jobs import job as _job
from tests.workers.local_jobs import validate as _validate
from workers.local import load_student, student_weights

TOY = {"teacher": "toy2d-ring", "method": "dmd2", "preset": "toy2d", "iterations": 40, "checkpoint_every": 10}
# ttur_ratio=1: the generator moves every step, so 4 steps give visibly different images at steps 2 and 4.
DIGITS = {"teacher": "digits", "method": "dmd2", "preset": "digits", "sets": ["ttur_ratio=1", "lr_gen=1e-3"],
          "iterations": 4, "batch_size": 4, "checkpoint_every": 2}


def _folder(jobs_db, run_id: int):
    return jobs_db.data_dir / "runs" / str(run_id)


def _points(jobs_db, run_id: int) -> np.ndarray:
    return np.load(_folder(jobs_db, run_id) / "samples.npy")


def test_every_checkpoint_of_a_toy_run_is_sampleable_while_running_and_after(jobs_db):
    distill = _job(jobs_db, "distill", TOY)
    folder = _folder(jobs_db, distill)
    with session_scope(jobs_db.factory) as s:
        assert repo.checkpoint_steps(session=s, run_id=distill) == [10, 20, 30, 40]
    assert sorted(p.name for p in (folder / "snapshots").glob("*.safetensors")) == [
        f"step-{s:07d}.safetensors" for s in (10, 20, 30, 40)]
    assert sorted(p.name for p in (folder / "checkpoints").glob("*.safetensors")) == [
        "step-0000030.safetensors", "step-0000040.safetensors"]  # the full training states are still pruned

    seeds = list(range(64))
    early = _job(jobs_db, "sample", {"model": f"run:{distill}", "seeds": seeds, "checkpoint": 10})
    late = _job(jobs_db, "sample", {"model": f"run:{distill}", "seeds": seeds, "checkpoint": 40})
    final = _job(jobs_db, "sample", {"model": f"run:{distill}", "seeds": seeds})
    assert not np.allclose(_points(jobs_db, early), _points(jobs_db, late))
    assert np.array_equal(_points(jobs_db, late), _points(jobs_db, final))  # the final model is the last snapshot

    # A run still running: no model.safetensors, and (a run started before student.json was written first) no
    # student.json either; its recorded checkpoints are sampleable from the snapshots alone.
    running_dir = folder.parent / "running"
    shutil.copytree(folder, running_dir)
    for name in ("model.safetensors", "model.json", "student.json"):
        (running_dir / name).unlink()
    with session_scope(jobs_db.factory) as s:
        running = repo.create_run(session=s, kind="distill", spec=_validate(jobs_db, "distill", TOY),
                                  out_dir="runs/running").id
        assert repo.claim_run(session=s, run_id=running, worker="elsewhere:1", lease_s=600)
        for step in (10, 20):
            repo.record_checkpoint(session=s, run_id=running, step=step, path=f"runs/running/checkpoints/{step}")
    with pytest.raises(ValueError, match=rf"^model: run {running} has not succeeded \(status running\)"):
        _validate(jobs_db, "sample", {"model": f"run:{running}", "seeds": [0]})
    with pytest.raises(ValueError, match=rf"^checkpoint: run {running} has no checkpoint at step 30; saved: 10, 20$"):
        _validate(jobs_db, "sample", {"model": f"run:{running}", "seeds": [0], "checkpoint": 30})
    at_10 = _job(jobs_db, "sample", {"model": f"run:{running}", "seeds": seeds, "checkpoint": 10})
    assert np.array_equal(_points(jobs_db, at_10), _points(jobs_db, early))

    # load_student directly: the final model, a snapshot, and a step that was never saved.
    _, spec = load_student(running_dir, jobs_db.data_dir, step=20)
    assert (spec["method"], spec["teacher"]) == ("dmd2", "toy2d-ring")
    assert student_weights(folder)[:2] == (40, folder / "model.safetensors")
    assert student_weights(folder, 20)[:2] == (20, folder / "snapshots" / "step-0000020.safetensors")
    with pytest.raises(ValueError, match=r"^checkpoint: run has no snapshot at step 15; saved: 10, 20, 30, 40$"):
        load_student(running_dir, jobs_db.data_dir, step=15)
    with pytest.raises(FileNotFoundError, match=r"^model: .* is neither teacher:NAME nor a finished student folder"):
        load_student(running_dir, jobs_db.data_dir)


def test_digits_images_are_keyed_by_the_checkpoint_they_came_from(jobs_db):
    distill = _job(jobs_db, "distill", DIGITS)
    with session_scope(jobs_db.factory) as s:
        assert repo.checkpoint_steps(session=s, run_id=distill) == [2, 4]
    model, seeds = f"run:{distill}", [0, 1]
    sample = {"model": model, "seeds": seeds, "class_id": 3}
    early = _job(jobs_db, "sample", {**sample, "checkpoint": 2})
    late = _job(jobs_db, "sample", {**sample, "checkpoint": 4})
    teacher = _job(jobs_db, "sample", {"model": "teacher:digits", "seeds": [0], "class_id": 3, "steps": 2})

    def images(checkpoint: int) -> dict[int, tuple[str, int]]:
        with session_scope(jobs_db.factory) as s:
            found = repo.find_images(session=s, model=model, steps=1, checkpoint=checkpoint, class_id=3, seeds=seeds)
            return {seed: (image.path, image.run_id) for seed, image in found.items()}

    assert images(2) == {seed: (f"runs/{early}/seed-{seed:06d}.png", early) for seed in seeds}
    assert images(4) == {seed: (f"runs/{late}/seed-{seed:06d}.png", late) for seed in seeds}
    for seed in seeds:
        png = f"seed-{seed:06d}.png"
        assert (_folder(jobs_db, early) / png).read_bytes() != (_folder(jobs_db, late) / png).read_bytes()
    with session_scope(jobs_db.factory) as s:
        row = repo.find_images(session=s, model="teacher:digits", steps=2, checkpoint=0, class_id=3, seeds=[0])
        assert row[0].run_id == teacher

    # The final model is recorded under the run's final step: the same key as checkpoint 4, so the row moves to it.
    final = _job(jobs_db, "sample", sample)
    assert images(4) == {seed: (f"runs/{final}/seed-{seed:06d}.png", final) for seed in seeds}
    assert (_folder(jobs_db, final) / "seed-000000.png").read_bytes() == (_folder(jobs_db, late) / "seed-000000.png").read_bytes()


def test_a_checkpoint_is_validated_naming_its_field(jobs_db):
    with session_scope(jobs_db.factory) as s:
        run_id = repo.create_run(session=s, kind="distill", spec=_validate(jobs_db, "distill", TOY), total=40).id
        sample_run = repo.create_run(session=s, kind="sample", spec={"model": "teacher:digits", "seeds": [0]}).id
        assert repo.claim_run(session=s, run_id=run_id, worker="w", lease_s=60)
        for step in (10, 20):
            repo.record_checkpoint(session=s, run_id=run_id, step=step, path=f"runs/{run_id}/checkpoints/{step}")
    snapshots = _folder(jobs_db, run_id) / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "step-0000010.safetensors").write_bytes(b"")  # validation looks for the file, never loads it
    cases = [
        ({"model": "teacher:digits", "checkpoint": 10}, r"^checkpoint: only run:ID models have checkpoints"),
        ({"model": f"run:{run_id}", "checkpoint": -1}, r"^checkpoint: Input should be greater than or equal to 0$"),
        ({"model": f"run:{run_id}", "checkpoint": 15}, rf"^checkpoint: run {run_id} has no checkpoint at step 15; "
                                                       r"saved: 10, 20$"),
        ({"model": f"run:{run_id}", "checkpoint": 20}, rf"^checkpoint: run {run_id} has no snapshot at step 20 "),
        ({"model": f"run:{sample_run}", "checkpoint": 10}, rf"^model: run {sample_run} is not a distill run$"),
    ]
    for spec, message in cases:
        with pytest.raises(ValueError, match=message):
            _validate(jobs_db, "sample", {"seeds": [0], **spec})
    assert _validate(jobs_db, "sample", {"model": f"run:{run_id}", "seeds": [0], "checkpoint": 10})["checkpoint"] == 10
