"""`distill-studio export RUN|DIR --out FOLDER` through the real CLI: a real tiny student of an imported DDPM teacher,
exported by its folder and by run:ID; the plain output is the folder and the three lines that load and call it;
refusals are one line naming the field."""

from __future__ import annotations

import json

from storage import repo
from storage.db import make_engine, make_session_factory, session_scope
from storage.settings import get_settings
from tests.app.cli_helpers import ok, one_error_line
from tests.tiny_pipelines import save_tiny_ddpm
from workers.local import distill


def _load_lines(out, steps: int) -> list[str]:
    return ["from diffusers import DiffusionPipeline", f"pipe = DiffusionPipeline.from_pretrained({str(out)!r})",
            f"images = pipe(num_inference_steps={steps}).images"]


def test_export_a_student_by_folder_and_by_run_id(cli, data_dir, tmp_path):
    assert cli("teachers", "import", save_tiny_ddpm(tmp_path / "ddpm", "v_prediction"), "--name", "ddpm-tiny").exit_code == 0
    assert cli("db", "upgrade").exit_code == 0
    engine = make_engine(get_settings().database_url)
    factory = make_session_factory(engine)
    try:
        # A distill run as a worker leaves it: succeeded, its student in DATA_DIR/runs/ID.
        # ttur_ratio=1: the generator moves on both iterations, so the two snapshots differ.
        spec = {"teacher": "ddpm-tiny", "method": "dmd2", "student_steps": 3, "sets": ["gan=false", "ttur_ratio=1"]}
        with session_scope(factory) as session:
            run = repo.create_run(session=session, kind="distill", spec=spec, total=2)
            run_id, folder = run.id, data_dir / run.out_dir
            assert repo.claim_run(session=session, run_id=run_id, worker="host:1", lease_s=600)
        distill("ddpm-tiny", "dmd2", folder, student_steps=3, sets=tuple(spec["sets"]), iterations=2, batch_size=2,
                data_dir=data_dir)
        with session_scope(factory) as session:
            assert repo.finish_run(session=session, run_id=run_id, worker="host:1", status="succeeded")
            running = repo.create_run(session=session, kind="distill", spec=spec, total=2).id
    finally:
        engine.dispose()

    out = tmp_path / "by-folder"
    result = cli("export", folder, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out), *_load_lines(out, 3)]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["scheduler"] == ["diffusers", "LCMScheduler"]
    assert json.loads((out / "export.json").read_text())["student"] == str(folder)

    by_run = ok(cli("export", f"run:{run_id}", "--out", tmp_path / "by-run", "--json"))
    assert (by_run["student"], by_run["step"], by_run["steps"], by_run["timesteps"]) == (f"run:{run_id}", 2, 3,
                                                                                          [999, 666, 333])
    assert by_run["load"] == _load_lines(tmp_path / "by-run", 3)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tmp_path / "by-run" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    # --step: a checkpoint's snapshot (the run's 2 iterations keep snapshots at steps 1 and 2), other weights.
    early = ok(cli("export", f"run:{run_id}", "--step", 1, "--out", tmp_path / "step-1", "--json"))
    assert early["step"] == 1
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != \
        (tmp_path / "step-1" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    # Refusals: one line each, naming the field; nothing is written.
    assert one_error_line(cli("export", folder, "--out", out)) == f"error: out: {out} is not empty; give a new or empty folder"
    assert one_error_line(cli("export", f"run:{running}", "--out", tmp_path / "x")) == \
        f"error: model: run {running} has not succeeded (status queued); export one of its checkpoints with --step N"
    assert one_error_line(cli("export", "teacher:ddpm-tiny", "--out", tmp_path / "x")) == \
        "error: model: 'teacher:ddpm-tiny' is a teacher; export takes a student: run:ID or a folder written by `distill`"
    assert one_error_line(cli("export", f"{folder}@2", "--out", tmp_path / "x")) == \
        f"error: model: '{folder}@2' names a step count; an export samples at the student's own step count (leave @2 out)"
    assert one_error_line(cli("export", folder, "--step", 5, "--out", tmp_path / "x")) == \
        "error: checkpoint: run has no snapshot at step 5; saved: 1, 2"
    assert not (tmp_path / "x").exists()


def test_export_of_a_built_in_teachers_student_is_refused(cli, data_dir, tmp_path):
    folder = tmp_path / "toy"
    distill("toy2d-ring", "dmd2", folder, preset="toy2d", iterations=2, batch_size=8)
    assert one_error_line(cli("export", folder, "--out", tmp_path / "pipe")) == (
        "error: model: a student of the built-in teacher 'toy2d-ring' cannot be exported as a diffusers pipeline: it is "
        "a 2-D point model, not an image model (students of digits and of imported diffusers, SD and SDXL teachers "
        "export)")
    assert not (tmp_path / "pipe").exists()
