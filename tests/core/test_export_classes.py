"""Exported students of class-conditional UNet2DModel teachers run in diffusers exactly as in the studio: real tiny
students of the built-in digits teacher (continuous cosine schedule, the UNet reading 1000 t) and of an imported
class-conditional tiny DDPM whose null label is 0, distilled for 2 iterations, exported through workers.export, loaded
with DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True) (the folder's own pipeline.py) and sampled from
the same noise and class ids as the studio's own sampler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core import export_pipeline
from core.export import EXPORT_FILE, export_student, stand_in
from core.schedules import CosineSchedule
from core.teachers.imported import import_folder
from tests.core.export_helpers import steps_kwargs
from tests.tiny_pipelines import save_tiny_ddpm
from workers.export import export
from workers.local import distill, load_student

# case -> (teacher, method, distill keyword arguments). Each student is trained once, on first use.
CASES = {
    "dmd2-1step": ("digits", "dmd2", {"preset": "digits"}),  # G reads t = 1: level 1000, alpha = 0, x0 = -v
    "dmd2-4step": ("digits", "dmd2", {"preset": "digits", "student_steps": 4}),  # with the GAN, on digits' own images
    "mmd-4step": ("digits", "mmd", {"preset": "digits", "student_steps": 4}),
    "emd": ("digits", "emd", {"preset": "digits"}),  # t_gen = 0.968... (lambda* = -6): off the 1/1000 grid
    "cc-dmd2-3step": ("cc-tiny", "dmd2", {"student_steps": 3, "sets": ("gan=false",)}),
}
LABELS = [3, 7, 0]
SEED = 7
# why 1e-4: the UNet calls are the same float32 operations on the same inputs (the same labels, the same time value
# after one float64 -> float32 cast); what differs is the scheduler's float32 alphas_cumprod (a product of up to 1,003
# float32 factors, ~4e-7 relative) against the studio's float64 cos(pi t / 2) cast once, on samples of magnitude ~1-3:
# ~1e-6 expected (measured <= 1e-6). A wrong level, time input, label or re-noising is off by O(0.1-1).
ATOL = 1e-4
T_GEN = (2 / math.pi) * math.atan(math.exp(3.0))  # EMD's t at lambda* = -6 on the cosine schedule


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export-classes")
    data_dir = root / "data"
    # 10 classes and the null label first (--null-class 0); v-prediction keeps x0 O(1) for a random UNet.
    import_folder(save_tiny_ddpm(root / "cc", "v_prediction", num_class_embeds=11), "cc-tiny", data_dir, null_class=0)
    return {"root": root, "data_dir": data_dir, "students": {}}


def student(world, case: str) -> Path:
    if case not in world["students"]:
        teacher, method, kwargs = CASES[case]
        out = world["root"] / "students" / case
        result = distill(teacher, method, out, iterations=2, batch_size=2, data_dir=world["data_dir"], **kwargs)
        assert result["status"] == "completed"
        world["students"][case] = out
    return world["students"][case]


def pipeline(summary: dict):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(summary["out"], trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def studio_sample(task, labels: list[int], steps: int) -> torch.Tensor:
    """The studio's sample from the pipeline's noise: its generator draws the initial noise, then one tensor per
    scheduler step, in that order (draw i of the bank = the i-th re-noising)."""
    generator = torch.Generator().manual_seed(SEED)
    bank = torch.stack([torch.randn((len(labels), *task.teacher.data_shape), generator=generator)
                        for _ in range(task.noise_draws(steps))])
    with torch.no_grad():
        return task.sample(bank, torch.tensor(labels), steps)


def assert_round_trip(summary: dict, task) -> None:
    pipe = pipeline(summary)
    got = pipe(class_labels=LABELS, generator=torch.Generator().manual_seed(SEED), output_type="latent",
               **steps_kwargs(summary)).images
    expected = studio_sample(task, LABELS, summary["steps"])
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= ATOL, (got - expected).abs().max().item()
    assert expected.abs().max().item() > 0.1  # not a comparison of zeros
    # The labels reach the UNet: another class for the first sample changes that sample and no other.
    other = pipe(class_labels=[LABELS[0] + 1, *LABELS[1:]], generator=torch.Generator().manual_seed(SEED),
                 output_type="latent", **steps_kwargs(summary)).images
    assert (other[0] - got[0]).abs().max().item() > 1e-3
    assert (other[1:] - got[1:]).abs().max().item() <= ATOL


@pytest.mark.parametrize("case, scheduler_class, timesteps, exact, scale", [
    ("dmd2-1step", "DDIMScheduler", [1000], True, 1.0),
    ("dmd2-4step", "LCMScheduler", [1000, 750, 500, 250], True, 1.0),
    # DDPM's "trailing" levels over 1,001 are 1000, 750, 499, 249: the load line passes the student's.
    ("mmd-4step", "DDPMScheduler", [1000, 750, 500, 250], False, 1.0),
    # Levels j at t = T_GEN j / 1000: the one step is at t_gen, where the UNet reads 1000 t_gen = 1000 * scale.
    ("emd", "DDIMScheduler", [1000], True, T_GEN),
    ("cc-dmd2-3step", "LCMScheduler", [999, 666, 333], True, 1.0),  # the teacher's own 1,000 levels
])
def test_an_exported_class_conditional_student_reproduces_the_studios_own_sample(world, tmp_path, case,
                                                                                  scheduler_class, timesteps, exact,
                                                                                  scale):
    folder = student(world, case)
    out = tmp_path / "pipe"
    summary = export(str(folder), out, data_dir=world["data_dir"])
    assert (summary["pipeline_class"], summary["scheduler_class"], summary["timesteps"],
            summary["exact_num_inference_steps"]) == ("ClassConditionalPipeline", scheduler_class, timesteps, exact)
    task, _ = load_student(folder, world["data_dir"])
    assert_round_trip(summary, task)

    # unet/, scheduler/, the template copied verbatim as pipeline.py, an index naming it, export.json.
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_FILE, "model_index.json", "pipeline.py", "scheduler", "unet"]
    assert (out / "pipeline.py").read_bytes() == Path(export_pipeline.__file__).read_bytes()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ClassConditionalPipeline"]
    assert index["scheduler"] == ["diffusers", scheduler_class] and index["unet"] == ["diffusers", "UNet2DModel"]
    # digits keeps its null class last; the imported UNet's null label 0 puts the studio's class i at label i + 1.
    labels_map = [*range(1, 11), 0] if case.startswith("cc-") else list(range(11))
    assert index["class_labels_map"] == labels_map
    assert index["timestep_scale"] == pytest.approx(scale, rel=1e-12)
    steps = f"num_inference_steps={len(timesteps)}" if exact else f"timesteps={timesteps}"
    assert summary["load"] == ["from diffusers import DiffusionPipeline",
                               f"pipe = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)",
                               f"images = pipe(class_labels=[0, 1, 2, 3], {steps}).images"]


def test_a_step_count_that_does_not_divide_1000_runs_on_a_stand_in_of_m_levels(world, tmp_path):
    # The 4-step MMD student sampled at 3 steps stands in for a 3-step one (its sampler is the same function of k, and
    # a second training would cost as much): t = 1, 2/3, 1/3 are no thousandths, so the stand-in has M = 1002 levels
    # below t = 1 and the UNet reads j * 1000 / 1002 (666.67 at level 668).
    task, spec = load_student(student(world, "mmd-4step"))
    task.config = task.config.replace(student_steps=3)
    summary = export_student(task, spec, None, tmp_path / "pipe")
    assert (summary["scheduler_class"], summary["timesteps"], summary["exact_num_inference_steps"]) == \
        ("DDPMScheduler", [1002, 668, 334], False)
    assert summary["load"][2] == "images = pipe(class_labels=[0, 1, 2, 3], timesteps=[1002, 668, 334]).images"
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["timestep_scale"] == pytest.approx(1000 / 1002, rel=1e-12)
    assert_round_trip(summary, task)


def test_the_cosine_stand_in_is_exact_at_the_students_times_and_refuses_uneven_ones():
    schedule = CosineSchedule()
    acp, scale, levels = stand_in(schedule, [1.0, 0.75, 0.5, 0.25])
    assert (acp.numel(), scale, levels) == (1001, 1.0, [1000, 750, 500, 250])
    t = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    assert torch.equal(acp[[1000, 750, 500, 250, 0]], schedule.alpha(t) ** 2)  # alpha = 0 at t = 1 exactly
    with pytest.raises(ValueError, match=r"^steps: the student samples at t = \[1.0, 0.6\], not evenly spaced"):
        stand_in(schedule, [1.0, 0.6])


def test_the_pipeline_refuses_bad_calls_in_one_line(world, tmp_path):
    summary = export(str(student(world, "dmd2-1step")), tmp_path / "pipe")
    pipe = pipeline(summary)
    with pytest.raises(ValueError, match=r"^class_labels: class ids must be integers in 0\.\.9 \(10 is the null class\)"):
        pipe(class_labels=[11], num_inference_steps=1)
    with pytest.raises(ValueError, match="^num_inference_steps: give exactly one of num_inference_steps and timesteps$"):
        pipe(class_labels=[1])
    with pytest.raises(ValueError, match="^timesteps: DDIMScheduler takes no explicit timesteps; give num_inference_steps$"):
        pipe(class_labels=[1], timesteps=[1000])
    # No labels: the null class, the studio's unconditional sample; "pt" is the [0, 1] image of "latent".
    latent = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(SEED),
                  output_type="latent").images
    image = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(SEED),
                 output_type="pt").images
    assert torch.equal(image, (latent / 2 + 0.5).clamp(0, 1))
    task, _ = load_student(student(world, "dmd2-1step"))
    assert (latent - studio_sample(task, [10, 10], 1)).abs().max().item() <= ATOL
    assert pipe(class_labels=[1, 2], num_inference_steps=1, output_type="pil").images[0].size == (16, 16)
