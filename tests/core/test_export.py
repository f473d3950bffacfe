"""Exported students run in diffusers exactly as in the studio: real tiny students of tiny random SD, SDXL and DDPM
teachers (distilled for 2 iterations through workers.local.distill), exported by core.export, loaded with
DiffusionPipeline.from_pretrained and sampled from the same noise as the studio's own sampler; and what cannot be
exported exactly is refused with one line naming the field. Class-conditional teachers (digits, imported class-conditional
DDPMs): tests/core/test_export_classes.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from core.catalogue import imported_dir
from core.export import EXPORT_FILE, check_exportable, export_student
from core.teachers import load_text_to_image_teacher
from core.teachers.imported import import_folder
from tests.core.export_helpers import steps_kwargs
from tests.tiny_pipelines import save_tiny_ddpm, save_tiny_sd, write_image_folder, write_prompts
from workers.export import export
from workers.local import distill, load_student

# case -> (teacher, method, distill keyword arguments, training input). Each student is trained once, on first use.
CASES = {
    "dmd2-1step": ("sd-tiny", "dmd2", {"preset": "sd15"}, "prompts"),  # G reads t = 999
    "dmd2-4step": ("sd-tiny", "dmd2", {"student_steps": 4, "sets": ("gan=false",)}, "prompts"),
    # lambda* = -3 puts t_gen at index 771: at the default -6 it clamps to 999 (SD's lowest log-SNR is about -5.4),
    # which the dmd2 case already covers, and a one-step level below 999 is what needs the cut schedule.
    "emd": ("sd-tiny", "emd", {"sets": ("lambda_star=-3",)}, "prompts"),
    "mmd-4step": ("sd-tiny", "mmd", {"student_steps": 4}, "data"),
    "sdxl-dmd2-1step": ("sdxl-tiny", "dmd2", {"preset": "sdxl-1step", "sets": ("gan=false",)}, "prompts"),  # t = 399
    "ddpm-dmd2-3step": ("ddpm-tiny", "dmd2", {"student_steps": 3, "sets": ("gan=false",)}, None),
}
PROMPTS = ["a red circle on the left", "the dog at the top"]
SEED = 7
# why 1e-4: the UNet calls are the same float32 operations on the same inputs; the only difference is the scheduler's
# float32 alphas_cumprod against the studio's float64 coefficients cast once, ~1e-7 relative on latents up to ~70
# (an eps-prediction x0 at t = 999 divides by alpha ~ 0.07). A wrong level or re-noising is off by O(1).
ATOL = 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export")
    data_dir = root / "data"
    import_folder(save_tiny_sd(root / "sd"), "sd-tiny", data_dir)
    import_folder(save_tiny_sd(root / "sdxl", xl=True), "sdxl-tiny", data_dir)
    # v-prediction: x0 = alpha z - sigma v stays O(1) for a random UNet, so DDPMPipeline's clamp to [0, 1] keeps most
    # values (an eps-prediction x0 at t = 999 would be clamped everywhere and compare nothing).
    import_folder(save_tiny_ddpm(root / "ddpm", "v_prediction"), "ddpm-tiny", data_dir)
    return {"root": root, "data_dir": data_dir, "prompts": write_prompts(root / "prompts.txt"),
            "data": write_image_folder(root / "images", size=64), "students": {}}


def student(world, case: str) -> Path:
    if case not in world["students"]:
        teacher, method, kwargs, source = CASES[case]
        inputs = {} if source is None else {source: world[source]}
        out = world["root"] / "students" / case
        result = distill(teacher, method, out, iterations=2, batch_size=2, data_dir=world["data_dir"], **kwargs, **inputs)
        assert result["status"] == "completed"
        world["students"][case] = out
    return world["students"][case]


def exported(world, case: str, tmp_path: Path, task=None, spec=None) -> tuple[dict, object, dict]:
    """(summary, task, spec): the student of `case` exported to tmp_path/pipe."""
    if task is None:
        task, spec = load_student(student(world, case), world["data_dir"])
    summary = export_student(task, spec, imported_dir(world["data_dir"]) / spec["teacher"], tmp_path / "pipe",
                             source=case, step=2)
    return summary, task, spec


def noise_bank(task, batch: int, draws: int) -> torch.Tensor:
    """The pipeline's noise as the studio's bank: its generator draws the initial latents, then one tensor per
    scheduler step, in that order (draw i of the bank = the i-th re-noising)."""
    generator = torch.Generator().manual_seed(SEED)
    return torch.stack([torch.randn((batch, *task.teacher.data_shape), generator=generator) for _ in range(draws)])


def pipeline(summary: dict):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(summary["out"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_text_round_trip(world, summary: dict, task, spec) -> None:
    pipe = pipeline(summary)
    got = pipe(PROMPTS, guidance_scale=1.0, generator=torch.Generator().manual_seed(SEED), output_type="latent",
               **steps_kwargs(summary)).images
    k = summary["steps"]
    cond = load_text_to_image_teacher(spec["teacher"], world["data_dir"]).encoder.encode(PROMPTS)
    with torch.no_grad():
        expected = task.sample(noise_bank(task, len(PROMPTS), task.noise_draws(k)), cond, k)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= ATOL, (got - expected).abs().max().item()
    assert not torch.allclose(expected[0], expected[1], atol=1e-2)  # two prompts, two noises: two different samples


@pytest.mark.parametrize("case, pipeline_class, scheduler_class, timesteps", [
    ("dmd2-1step", "StableDiffusionPipeline", "DDIMScheduler", [999]),
    ("dmd2-4step", "StableDiffusionPipeline", "LCMScheduler", [999, 749, 499, 249]),
    ("emd", "StableDiffusionPipeline", "DDIMScheduler", [771]),
    ("mmd-4step", "StableDiffusionPipeline", "DDPMScheduler", [999, 749, 499, 249]),
    ("sdxl-dmd2-1step", "StableDiffusionXLPipeline", "DDIMScheduler", [399]),
])
def test_an_exported_text_to_image_student_reproduces_the_studios_own_sample(world, tmp_path, case, pipeline_class,
                                                                            scheduler_class, timesteps):
    summary, task, spec = exported(world, case, tmp_path)
    assert (summary["pipeline_class"], summary["scheduler_class"], summary["timesteps"]) == \
        (pipeline_class, scheduler_class, timesteps)
    assert summary["exact_num_inference_steps"] and summary["steps"] == len(timesteps)
    pipe = pipeline(summary)
    assert (type(pipe).__name__, type(pipe.scheduler).__name__) == (pipeline_class, scheduler_class)
    assert_text_round_trip(world, summary, task, spec)

    # The teacher's folder minus its UNet and scheduler (replaced) and the studio's manifest, plus export.json.
    out, teacher = Path(summary["out"]), imported_dir(world["data_dir"]) / spec["teacher"]
    parts = sorted(p.name for p in teacher.iterdir() if p.name not in ("teacher.json",))
    assert sorted(p.name for p in out.iterdir()) == sorted([*parts, EXPORT_FILE])
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class and index["scheduler"] == ["diffusers", scheduler_class]
    assert (out / "text_encoder" / "model.safetensors").read_bytes() == \
        (teacher / "text_encoder" / "model.safetensors").read_bytes()
    assert list((out / "unet").glob("*.safetensors")) and not list((out / "unet").glob("*.bin"))
    record = json.loads((out / EXPORT_FILE).read_text())
    assert {k: record[k] for k in ("student", "step", "teacher", "method", "steps", "timesteps")} == \
        {"student": case, "step": 2, "teacher": spec["teacher"], "method": spec["method"], "steps": len(timesteps),
         "timesteps": timesteps}
    assert summary["load"] == [
        "from diffusers import DiffusionPipeline",
        f"pipe = DiffusionPipeline.from_pretrained({str(out)!r})",
        f"images = pipe('a photograph of a cat', num_inference_steps={len(timesteps)}, guidance_scale=1.0).images"]


def test_an_ancestral_student_whose_steps_do_not_divide_n_passes_its_timesteps(world, tmp_path):
    # The 4-step MMD student sampled at 3 steps stands in for a 3-step one (the sampler is the same function of k, and
    # a second training would cost as much): 1000 / 3 levels round differently in "trailing" spacing (999, 666, 332)
    # than on the studio's grid (999, 666, 333), so the load line names the trained timesteps.
    task, spec = load_student(student(world, "mmd-4step"), world["data_dir"])
    task.config = task.config.replace(student_steps=3)
    summary, task, spec = exported(world, "mmd-4step", tmp_path, task, spec)
    assert summary["timesteps"] == [999, 666, 333] and not summary["exact_num_inference_steps"]
    assert summary["load"][2] == ("images = pipe('a photograph of a cat', timesteps=[999, 666, 333], "
                                  "guidance_scale=1.0).images")
    assert_text_round_trip(world, summary, task, spec)
    # The count alone would sample other levels: the same pipeline at num_inference_steps=3 differs.
    pipe = pipeline(summary)
    other = pipe(PROMPTS, num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(SEED),
                 output_type="latent").images
    right = pipe(PROMPTS, timesteps=[999, 666, 333], guidance_scale=1.0, generator=torch.Generator().manual_seed(SEED),
                 output_type="latent").images
    assert (other - right).abs().max().item() > 1e-3


def test_a_student_of_an_unconditional_ddpm_teacher_exports_as_a_ddpm_pipeline(world, tmp_path):
    summary, task, spec = exported(world, "ddpm-dmd2-3step", tmp_path)
    # LCM's grid is the studio's for any k (999, 666, 333 here, where "trailing" would give 332).
    assert (summary["pipeline_class"], summary["scheduler_class"], summary["timesteps"]) == \
        ("DDPMPipeline", "LCMScheduler", [999, 666, 333])
    assert summary["load"][2] == "images = pipe(num_inference_steps=3).images"  # no prompt, no guidance_scale
    pipe = pipeline(summary)
    assert type(pipe).__name__ == "DDPMPipeline"
    got = pipe(batch_size=2, generator=torch.Generator().manual_seed(SEED), num_inference_steps=3, output_type="pt").images
    with torch.no_grad():
        x = task.sample(noise_bank(task, 2, task.noise_draws(3)), None, 3)
    expected = (x / 2 + 0.5).clamp(0, 1)  # DDPMPipeline's own output mapping
    assert (got - expected).abs().max().item() <= ATOL
    inside = ((expected > 0) & (expected < 1)).float().mean().item()
    assert inside > 0.5, inside  # the comparison is not of clamped constants
    assert sorted(p.name for p in Path(summary["out"]).iterdir()) == [EXPORT_FILE, "model_index.json", "scheduler", "unet"]


def test_students_of_built_in_point_teachers_are_refused_with_one_line(world, tmp_path):
    # digits and class-conditional UNet2DModel teachers export (tests/core/test_export_classes.py); toy2d is no image.
    folder = tmp_path / "toy"
    distill("toy2d-ring", "dmd2", folder, preset="toy2d", iterations=2, batch_size=8)
    with pytest.raises(ValueError) as refused:
        export(str(folder), tmp_path / "pipe")
    assert str(refused.value) == (
        "model: a student of the built-in teacher 'toy2d-ring' cannot be exported as a diffusers pipeline: it is a 2-D "
        "point model, not an image model (students of digits and of imported diffusers, SD and SDXL teachers export)")
    assert not (tmp_path / "pipe").exists()  # the refused export leaves no folder behind
    task, spec = load_student(folder)
    with pytest.raises(ValueError, match="^model: a student of the built-in teacher 'toy2d-ring'"):
        export_student(task, spec, None, tmp_path / "pipe")
    assert check_exportable({"teacher": "digits", "method": "dmd2"}, None)["kind"] == "builtin"


def test_a_non_empty_out_is_refused_before_any_work(world, tmp_path):
    out = tmp_path / "pipe"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # The student does not exist: the refusal is about --out, so --out is checked first.
    with pytest.raises(ValueError, match=r"^out: .*pipe is not empty; give a new or empty folder$"):
        export(str(tmp_path / "no-such-student"), out)
    folder = student(world, "ddpm-dmd2-3step")
    with pytest.raises(ValueError, match="^out: "):
        export(str(folder), out, data_dir=world["data_dir"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    summary = export(str(folder), out, data_dir=world["data_dir"])  # an empty folder is fine
    assert summary["out"] == str(out) and (out / "model_index.json").is_file()
    shutil.rmtree(out)
