"""`distill --prompts/--data` on an imported SD teacher through the real CLI, `sample` of the student with a prompt, a
second stage with `--init`; refusals arrive as one line before anything is written or queued."""

from __future__ import annotations

import json

from PIL import Image

from tests.app.cli_helpers import ok, one_error_line
from tests.tiny_pipelines import save_tiny_sd, write_image_folder, write_prompts

RUN = ["--iterations", "2", "--batch-size", "2", "--json"]


def test_distill_an_sd_teacher_from_prompts_then_sample_the_student_with_a_prompt(cli, tmp_path, data_dir):
    ok(cli("teachers", "import", save_tiny_sd(tmp_path / "sd"), "--name", "sd-tiny", "--json"))
    prompts = write_prompts(tmp_path / "prompts.txt")
    result = ok(cli("distill", "--teacher", "sd-tiny", "--method", "dmd2", "--preset", "sd15", "--prompts", prompts,
                    "--out", tmp_path / "student", *RUN))
    assert (result["status"], result["step"], result["student_steps"]) == ("completed", 2, 1)
    spec = json.loads((tmp_path / "student" / "student.json").read_text())
    assert spec["inputs"]["prompts"]["count"] == 3 and spec["config"]["guidance"] == 1.75

    summary = ok(cli("sample", "--model", tmp_path / "student", "--prompt", "a blue square", "--n", 2,
                     "--out", tmp_path / "samples", "--json"))
    assert (summary["nfe"], summary["steps"], summary["sampler"], summary["images"]) == (1, 1, "student", 2)
    assert Image.open(tmp_path / "samples" / "prompt-000-seed-000001.png").size == (64, 64)
    assert one_error_line(cli("sample", "--model", tmp_path / "student", "--n", 1, "--out", tmp_path / "x")) == \
        "error: prompt: 'sd-tiny' is a text-to-image teacher; give --prompt TEXT or --prompts FILE"
    assert one_error_line(cli("sample", "--model", tmp_path / "student", "--prompt", "a", "--guidance", 2,
                              "--out", tmp_path / "x")) == \
        "error: guidance: students are sampled unguided (guidance belongs to the teacher)"
    assert not (tmp_path / "x").exists()

    # DMD2's second SD 1.5 stage: the GAN on real images, from the first stage's latest checkpoint.
    second = ok(cli("distill", "--teacher", "sd-tiny", "--method", "dmd2", "--preset", "sd15-gan", "--data",
                    write_image_folder(tmp_path / "images"), "--init", tmp_path / "student", "--out", tmp_path / "gan",
                    *RUN))
    assert second["status"] == "completed"
    init = json.loads((tmp_path / "gan" / "student.json").read_text())["init"]
    assert (init["from"], init["nets"]) == (str(tmp_path / "student"), ["student", "fake"])


def test_a_method_that_needs_images_refuses_before_work_and_runs_with_data(cli, tmp_path, data_dir):
    ok(cli("teachers", "import", save_tiny_sd(tmp_path / "sd", xl=True), "--name", "sdxl-tiny", "--json"))
    prompts = write_prompts(tmp_path / "prompts.txt")
    mmd = ["distill", "--teacher", "sdxl-tiny", "--method", "mmd", "--student-steps", "2"]
    line = one_error_line(cli(*mmd, "--prompts", prompts, "--out", tmp_path / "run"))
    assert line.startswith("error: data: mmd with these settings trains on real images; give --data FOLDER")
    assert one_error_line(cli(*mmd, "--prompts", prompts, "--submit")) == line  # refused before it is queued
    small = write_image_folder(tmp_path / "small", size=32)
    assert one_error_line(cli(*mmd, "--data", small, "--out", tmp_path / "run")) == (
        f"error: data: {small}/metadata.jsonl line 1: img-0.png is 32x32; at resolution 64 images must be square and "
        "at least 64x64")
    assert not (tmp_path / "run").exists()

    result = ok(cli(*mmd, "--data", write_image_folder(tmp_path / "images"), "--out", tmp_path / "run", *RUN))
    assert (result["status"], result["student_steps"]) == ("completed", 2)
    assert len(list((data_dir / "cache" / "latents").glob("*.safetensors"))) == 1
