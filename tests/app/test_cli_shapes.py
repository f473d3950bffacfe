"""The built-in `shapes` teacher through the real CLI: `teachers train shapes` (both stages, the record, --install
checked as an import), every method distilled from the benchmark's own generator with its `shapes` preset, a student
sampled with a prompt and exported to a pipeline diffusers runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.method_specs import METHOD_CONFIGS, PRESETS
from core.specs import SHAPES_GUIDANCE
from tests.app.cli_helpers import ok, one_error_line

RUN = ["--iterations", "2", "--batch-size", "4", "--json"]


def test_teachers_train_shapes_runs_both_stages_records_them_and_installs_a_checked_folder(cli, tmp_path, monkeypatch):
    import workers.pipeline_teacher

    monkeypatch.setattr(workers.pipeline_teacher, "WEIGHTS_DIR", tmp_path / "weights")  # never the shipped folder
    (tmp_path / "weights").mkdir()
    result = ok(cli("teachers", "train", "shapes", "--iterations", "2", "--out", tmp_path / "run", "--install",
                    "--json"))
    assert (result["status"], result["stage"], result["step"]) == ("completed", "unet", 2)
    record = result["training"]
    assert (record["iterations"], record["vae_iterations"]) == (2, 2)
    assert record["cpu_minutes"] > 0 and record["git"]  # (the command is this test process's argv under CliRunner)
    for stage in ("vae", "unet"):  # CPU time is kept per stage, so a resumed training still records all of it
        assert json.loads((tmp_path / "run" / stage / "cpu.json").read_text())["cpu_s"] > 0
    installed = tmp_path / "weights" / "shapes"
    assert result["installed"] == str(installed)
    manifest = json.loads((installed / "teacher.json").read_text())
    assert (manifest["kind"], manifest["data_shape"], manifest["resolution"]) == ("sd", [4, 16, 16], 32)
    assert manifest["training"] == record
    assert not list(tmp_path.joinpath("weights").glob(".shapes-*"))  # no temporary folder left behind


def test_teachers_train_shapes_reuses_a_pipelines_vae_and_keeps_its_record(cli, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    from core.catalogue import BUILTIN_WEIGHTS_DIR

    shipped = BUILTIN_WEIGHTS_DIR / "shapes"
    result = ok(cli("teachers", "train", "shapes", "--iterations", "2", "--vae", shipped, "--out", tmp_path / "run",
                    "--json"))
    assert (result["status"], result["stage"], result["step"]) == ("completed", "unet", 2)
    assert not (tmp_path / "run" / "vae").exists()  # stage 1 never ran
    record = result["training"]
    assert "vae_iterations" not in record
    source = json.loads((shipped / "teacher.json").read_text())["training"]
    reused = record["vae_from"]
    assert reused["folder"] == str(shipped)
    original = source.get("vae_from", source)  # a VAE reused in turn keeps the record of the run that trained it
    assert {k: reused[k] for k in ("vae_iterations", "git")} == {k: original[k] for k in ("vae_iterations", "git")}
    got, want = (AutoencoderKL.from_pretrained(f / "vae") for f in (tmp_path / "run" / "pipeline", shipped))
    for (name, a), b in zip(got.state_dict().items(), want.state_dict().values()):
        assert torch.equal(a, b), name
    assert got.config.scaling_factor == pytest.approx(want.config.scaling_factor, rel=1e-6)


def test_teachers_train_refuses_a_vae_that_is_not_the_recipes(cli, tmp_path):
    from core.catalogue import BUILTIN_WEIGHTS_DIR

    shutil.copytree(BUILTIN_WEIGHTS_DIR / "shapes" / "vae", tmp_path / "other" / "vae")
    config = json.loads((tmp_path / "other" / "vae" / "config.json").read_text())
    (tmp_path / "other" / "vae" / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    line = one_error_line(cli("teachers", "train", "shapes", "--iterations", "1", "--vae", tmp_path / "other",
                              "--out", tmp_path / "run"))
    assert line.startswith("error: vae:") and "latent_channels=8" in line
    line = one_error_line(cli("teachers", "train", "shapes", "--iterations", "1", "--vae", tmp_path,
                              "--out", tmp_path / "run"))
    assert line.startswith("error: vae:") and "no vae/config.json" in line
    line = one_error_line(cli("teachers", "train", "digits", "--iterations", "1", "--vae", tmp_path / "other",
                              "--out", tmp_path / "run2"))
    assert line.startswith("error: vae:") and "not a text-to-image teacher" in line


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_every_method_distils_shapes_from_its_generator_with_the_shapes_preset(cli, tmp_path, data_dir, method):
    quick = ["--set", "precond_batches=1"] if method == "mmd-instant" else []  # its preconditioner needs 200 first
    result = ok(cli("distill", "--teacher", "shapes", "--method", method, "--preset", "shapes", *quick, "--out",
                    tmp_path / "student", *RUN))
    assert (result["status"], result["step"]) == ("completed", 2)
    spec = json.loads((tmp_path / "student" / "student.json").read_text())
    assert spec["inputs"] == {"benchmark": "shapes"}
    assert spec["config"]["guidance"] == SHAPES_GUIDANCE == PRESETS[method]["shapes"].guidance
    previews = sorted((tmp_path / "student" / "previews").glob("*.png"))
    assert previews, "the fixed validation prompts are drawn and decoded"


def test_a_shapes_student_samples_with_a_prompt_and_exports_to_a_pipeline_diffusers_runs(cli, tmp_path, data_dir):
    from diffusers import DiffusionPipeline

    ok(cli("distill", "--teacher", "shapes", "--method", "dmd2", "--preset", "shapes+no-gan", "--out",
           tmp_path / "student", *RUN))
    summary = ok(cli("sample", "--model", tmp_path / "student", "--prompt",
                     "a large red circle in the centre, on a white background", "--n", 2, "--out", tmp_path / "s",
                     "--json"))
    assert (summary["nfe"], summary["images"]) == (1, 2)
    exported = ok(cli("export", tmp_path / "student", "--out", tmp_path / "pipe", "--json"))
    assert exported["pipeline_class"] == "StableDiffusionPipeline"
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a small blue star at the top, on a black background", num_inference_steps=1, guidance_scale=1.0,
                 output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_shapes_takes_a_prompt_file_instead_of_its_generator_and_refuses_bad_input(cli, tmp_path, data_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle on the left, on a white background\n")
    result = ok(cli("distill", "--teacher", "shapes", "--method", "emd", "--preset", "shapes", "--prompts", prompts,
                    "--out", tmp_path / "student", *RUN))
    assert result["status"] == "completed"
    spec = json.loads((tmp_path / "student" / "student.json").read_text())
    assert spec["inputs"]["prompts"]["count"] == 1 and "benchmark" not in spec["inputs"]
    assert one_error_line(cli("distill", "--teacher", "shapes", "--method", "emd", "--preset", "shapes+nope",
                              "--out", tmp_path / "x")).startswith("error: preset: unknown preset 'nope' for emd")
    assert not (tmp_path / "x").exists()
