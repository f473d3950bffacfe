"""`teachers import` of Stable Diffusion folders and class-conditional UNet2DModel folders (--null-class), and the
one-line refusals of distilling a text-to-image teacher, or sampling it, without prompts, through the real CLI."""

from __future__ import annotations

from tests.app.cli_helpers import ok, one_error_line
from tests.tiny_pipelines import save_tiny_ddpm, save_tiny_sd

NO_INPUTS = ("error: prompts: 'sd-tiny' is a text-to-image teacher; give --prompts FILE (one prompt per line) or --data "
             "FOLDER (its captions are the prompts)")
PROMPT_REFUSAL = "error: prompt: 'sd-tiny' is a text-to-image teacher; give --prompt TEXT or --prompts FILE"


def test_import_an_sd_folder_then_list_it_and_refuse_to_distill_or_sample_it_without_prompts(cli, tmp_path, data_dir):
    folder = save_tiny_sd(tmp_path / "sd", "v_prediction")
    result = cli("teachers", "import", folder, "--name", "sd-tiny")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == \
        "imported sd-tiny: StableDiffusionPipeline, v_prediction, 64x64 px, latents 4x32x32"

    rows = ok(cli("teachers", "list", "--json"))
    sd = rows[-1]
    assert (sd["name"], sd["kind"], sd["data_shape"], sd["resolution"], sd["builtin"]) == \
        ("sd-tiny", "sd", [4, 32, 32], 64, False)
    listed = cli("teachers", "list")
    assert listed.exit_code == 0 and "sd-tiny" in listed.stdout and "4x32x32" in listed.stdout

    assert one_error_line(cli("distill", "--teacher", "sd-tiny", "--method", "emd", "--out", tmp_path / "run")) == NO_INPUTS
    assert one_error_line(cli("distill", "--teacher", "sd-tiny", "--method", "emd", "--submit")) == NO_INPUTS
    assert one_error_line(cli("sample", "--model", "teacher:sd-tiny", "--n", 1, "--out", tmp_path / "out")) == PROMPT_REFUSAL
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_import_a_class_conditional_folder_with_and_without_a_null_class(cli, tmp_path, data_dir):
    folder = save_tiny_ddpm(tmp_path / "cond", num_class_embeds=11)
    line = one_error_line(cli("teachers", "import", folder, "--name", "cond"))
    assert "class-conditional UNet2DModel folders have no agreed null class; pass --null-class K" in line
    line = one_error_line(cli("teachers", "import", folder, "--name", "cond", "--null-class", 11))
    assert "null_class: must be in [0, 10] (num_class_embeds 11), got 11" in line
    assert not (data_dir / "teachers" / "cond").exists()

    result = cli("teachers", "import", folder, "--name", "cond", "--null-class", 0)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "imported cond: epsilon, 3x8x8, classes=10, null class 0"
    info = ok(cli("teachers", "list", "--json"))[-1]
    assert (info["name"], info["num_classes"], info["null_class"]) == ("cond", 10, 0)
    ok(cli("sample", "--model", "teacher:cond", "--n", 2, "--steps", 2, "--class", 9, "--guidance", 2,
            "--out", tmp_path / "samples", "--json"))
