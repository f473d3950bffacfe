"""Export a distilled student as a diffusers pipeline folder that runs the student's own k-step sampler.

    pipe = DiffusionPipeline.from_pretrained(FOLDER)
    images = pipe(prompt, num_inference_steps=k, guidance_scale=1.0).images

The folder is the teacher's pipeline with the student's UNet and a scheduler configured so that diffusers' loop is the
studio's sampler step for step (students are unguided: guidance was baked in while training):

- one step (DMD2 at one_step_t, EMD and Diff-Instruct at t_gen, any 1-step student) at trained index T: DDIMScheduler,
  "trailing" spacing, set_alpha_to_one, on the teacher's schedule cut after level T (num_train_timesteps T + 1 and the
  teacher's first T + 1 betas, so alphas_cumprod[0..T] are the teacher's own): its single step calls the UNet at T and
  returns the x0 prediction itself. ("leading" spacing with steps_offset = T does the same, but StableDiffusionPipeline
  resets any steps_offset to 1 when it is built, so its one step would run at t = 1.)
- fresh-noise re-noising (DMD2, k >= 2): LCMScheduler over all N training levels (its grid is core.schedules.time_grid's)
  with a huge timestep_scaling, so c_skip = 0 and c_out = 1: z_s = alpha_s x0 + sigma_s n with x0 the student's own;
- the posterior q(z_s | z_t, x0) (MMD, MMD-instant): DDPMScheduler, "trailing" spacing, fixed_small variance. It equals
  the studio's grid only where k divides N; otherwise the load line passes the trained timesteps explicitly.

Class-conditional UNet2DModel teachers (the built-in digits, imported class-conditional DDPMs) have no stock diffusers
pipeline: their folder gets core/export_pipeline.py, copied verbatim as pipeline.py (ClassConditionalPipeline, the
DDPMPipeline loop plus class labels), named in model_index.json, and loads with trust_remote_code=True. Its config maps
the studio's class ids to the UNet's labels (an imported UNet's null label may be any K) and scales the UNet's time.

The digits teacher runs on a continuous cosine schedule (alpha = cos(pi t / 2)) and reads 1000 t. Its students export on
a discrete stand-in that is exact on their own times: M + 1 levels, level j at t = t_top j / M (t_top the student's
first time, M the smallest multiple of k from 1000 on), given to the scheduler as trained_betas with alphas_cumprod[j]
= cos^2(pi t_j / 2), and timestep_scale = 1000 t_top / M. A student sampling from t = 1 with k dividing 1000 gets
M = 1000 and scale 1: level j is t = j / 1000 and the UNet reads j, the value it was trained at; the one level with
alpha = 0 (j = M at t = 1) is handled by every scheduler used (v-prediction: x0 = -v, no division by alpha). EMD's and
Diff-Instruct's t_gen (lambda* = -6 gives t = 0.968...) is no multiple of 1/1000, hence t_top and the scale.

Which times a student samples at are read off the method's own sampler (a probe denoiser records them), and each
scheduler is checked against them and against the (stand-in) alphas_cumprod before anything is written.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from core.denoisers import Denoiser
from core.export_checks import RENOISING, SD_KINDS, check_exportable
from core.lora import adapter_weights, is_lora, lora_config, merged_unet
from core.schedules import CosineSchedule, DiscreteSchedule

EXPORT_FILE = "export.json"
SCHEDULERS = {"one-step": "DDIMScheduler", "marginal": "LCMScheduler", "ancestral": "DDPMScheduler"}
# The scheduler-config keys that define alphas_cumprod; the rest of the teacher's (sampler) config does not carry over.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "rescale_betas_zero_snr")
# why: LCMScheduler's boundary scalings are c_skip = 0.25 / (0.25 + (t s)^2) and c_out = t s / sqrt(0.25 + (t s)^2);
# at s = 1e8 and t >= 1, c_skip <= 2.5e-17 and c_out rounds to 1 in float32, and (999 s)^2 ~ 1e22 stays finite.
LCM_TIMESTEP_SCALING = 1e8
EXAMPLE_PROMPT = "a photograph of a cat"
CLASS_PIPELINE = "ClassConditionalPipeline"
CLASS_PIPELINE_FILE = "pipeline.py"  # the module model_index.json names: ["pipeline", CLASS_PIPELINE]
# The digits stand-in has at least this many intervals: with 1000 (k dividing it, from t = 1) level j is t = j / 1000,
# where the UNet reads j exactly as in training.
STAND_IN_LEVELS = 1000
# why 1e-9: the studio's grid t_top (1 - i/k) is float64 arithmetic (linspace), off by ~1e-16; a sampler on another
# grid is off by at least 1/(2k).
GRID_ATOL = 1e-9


class _Probe(Denoiser):
    """Records the time of every denoiser call and returns x0 = 0: run through a method's own `sample`, it gives the
    times the student is queried at, without running the network."""

    def __init__(self, schedule, data_shape):
        super().__init__(schedule, data_shape)
        self.times: list[float] = []

    def forward(self, z_t, t, cond=None):
        self.times.append(float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0]))
        return torch.zeros_like(z_t)


def student_times(task) -> list[float]:
    """The (float64) times the student is called at, in order, by its method's own sampler at its own step count."""
    k = task.config.student_steps
    probe = _Probe(task.schedule, task.teacher.data_shape)
    noise = torch.zeros((task.noise_draws(k), 1, *task.teacher.data_shape))
    task.sample(noise, None, k, student=probe)
    return probe.times


def stand_in(schedule, times: list[float]) -> tuple[torch.Tensor, float, list[int]]:
    """(alphas_cumprod in float64, the UNet's time per level, the student's levels) of the discrete schedule the
    exported scheduler runs on.

    An imported teacher's own levels (time = level); for the continuous cosine schedule, M + 1 levels at
    t_j = t_top j / M with M the smallest multiple of k from STAND_IN_LEVELS on, so the student's k evenly spaced times
    t_top (1 - i/k) are the levels M - i M / k exactly (see the module docstring)."""
    if isinstance(schedule, DiscreteSchedule):
        return schedule.alphas_cumprod, 1.0, [int(schedule.index(t)) for t in times]
    if not isinstance(schedule, CosineSchedule):
        raise ValueError(f"model: the teacher's {type(schedule).__name__} has no diffusers scheduler")
    k, top = len(times), times[0]
    even = [top * (1 - i / k) for i in range(k)]
    if max(abs(a - b) for a, b in zip(times, even)) > GRID_ATOL:
        raise ValueError(f"steps: the student samples at t = {[round(t, 6) for t in times]}, not evenly spaced from "
                         f"t = {top:.6g} down, which no diffusers scheduler's grid reproduces")
    m = k * math.ceil(STAND_IN_LEVELS / k)
    t = top * torch.arange(m + 1, dtype=torch.float64) / m
    t[-1] = top  # exactly, so that t_top = 1 keeps alpha = 0
    scale = float(schedule.model_time(torch.tensor(top, dtype=torch.float64))) / m
    return schedule.alpha(t) ** 2, scale, [m - i * (m // k) for i in range(k)]


def _stand_in_config(alphas_cumprod: torch.Tensor) -> dict:
    """A scheduler config whose alphas_cumprod (the cumulative product of 1 - trained_betas) is `alphas_cumprod`."""
    ratio = alphas_cumprod[1:] / alphas_cumprod[:-1]
    betas = torch.cat([1 - alphas_cumprod[:1], 1 - ratio])
    return {"num_train_timesteps": alphas_cumprod.numel(), "trained_betas": betas.tolist()}


def _scheduler(renoising: str, teacher_cfg: dict, prediction_type: str, timesteps: list[int]):
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[renoising])
    accepted = set(inspect.signature(cls.__init__).parameters)
    cfg = {k: v for k, v in teacher_cfg.items() if k in SCHEDULE_KEYS and k in accepted}
    # steps_offset is read by "leading" spacing only; 1 keeps StableDiffusionPipeline from rewriting the config.
    cfg |= {"prediction_type": prediction_type, "clip_sample": False, "thresholding": False, "steps_offset": 1}
    if renoising == "one-step":
        last = timesteps[0]
        if last < int(cfg.get("num_train_timesteps", 1000)) - 1:
            # The teacher's betas as the studio reads them (core.teachers.imported.ddpm_alphas_cumprod), cut after T.
            betas = diffusers.DDPMScheduler.from_config(teacher_cfg).betas[:last + 1]
            cfg |= {"num_train_timesteps": last + 1, "trained_betas": betas.tolist(), "rescale_betas_zero_snr": False}
        cfg |= {"timestep_spacing": "trailing", "set_alpha_to_one": True}
    elif renoising == "marginal":
        cfg |= {"original_inference_steps": int(cfg.get("num_train_timesteps", 1000)),
                "timestep_scaling": LCM_TIMESTEP_SCALING}
    else:
        cfg |= {"timestep_spacing": "trailing", "variance_type": "fixed_small"}
    try:
        return cls(**cfg)
    except (ValueError, TypeError, NotImplementedError) as exc:  # e.g. a beta_schedule this scheduler lacks
        raise ValueError(f"scheduler: {cls.__name__} cannot take the teacher's schedule ({exc})") from None


def _check_scheduler(scheduler, alphas_cumprod: torch.Tensor, timesteps: list[int]) -> bool:
    """True if the scheduler's own grid at k steps is the student's; refuses a scheduler on another noise schedule."""
    acp = scheduler.alphas_cumprod.double()
    # A one-step scheduler holds the levels up to its T only. why rtol 1e-5: diffusers keeps alphas_cumprod in float32
    # (relative rounding ~6e-8, ~4e-7 after the digits stand-in's 1,000-factor product); another beta schedule is off by
    # far more. atol 0: the level with alpha = 0 must be exactly 0.
    teacher = alphas_cumprod[:acp.numel()]
    if acp.numel() <= max(timesteps) or not torch.allclose(acp, teacher, rtol=1e-5, atol=0):
        raise ValueError(f"scheduler: {type(scheduler).__name__} does not reproduce the teacher's alphas_cumprod")
    scheduler.set_timesteps(len(timesteps))
    return [int(t) for t in scheduler.timesteps] == timesteps


def _student_unet(task, kind: str):
    unet = getattr(getattr(task.student, "net", None), "unet", None)
    expected = "UNet2DConditionModel" if kind in SD_KINDS else "UNet2DModel"
    if type(unet).__name__ != expected:
        raise ValueError(f"model: the student's network is {type(unet).__name__}, not the {expected} of its teacher")
    return unet


def _load_lines(folder: Path, pipeline_class: str, timesteps: list[int], exact_steps: bool,
                num_classes: int = 0) -> list[str]:
    steps = f"num_inference_steps={len(timesteps)}" if exact_steps else f"timesteps={timesteps}"
    load = f"pipe = DiffusionPipeline.from_pretrained({str(folder)!r})"
    if pipeline_class in SD_KINDS.values():
        call = f"images = pipe({EXAMPLE_PROMPT!r}, {steps}, guidance_scale=1.0).images"
    elif pipeline_class == CLASS_PIPELINE:
        # The folder's own pipeline.py: diffusers runs a local one only with trust_remote_code.
        load = f"pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)"
        call = f"images = pipe(class_labels={list(range(min(num_classes, 4)))}, {steps}).images"
    else:
        call = f"images = pipe({steps}).images"  # DDPMPipeline takes neither a prompt nor a guidance scale
    return ["from diffusers import DiffusionPipeline", load, call]


def _save_class_pipeline(folder: Path, unet, scheduler, class_labels_map: list[int], timestep_scale: float) -> None:
    """unet/, scheduler/, this package's export_pipeline.py as pipeline.py, and a model_index.json naming it."""
    from core import export_pipeline

    pipe = export_pipeline.ClassConditionalPipeline(unet=unet, scheduler=scheduler, class_labels_map=class_labels_map,
                                                    timestep_scale=timestep_scale)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(export_pipeline.__file__, folder / CLASS_PIPELINE_FILE)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [Path(CLASS_PIPELINE_FILE).stem, CLASS_PIPELINE]
    index_path.write_text(json.dumps(index, indent=2))


def _copy_sd_parts(teacher_folder: Path, dest: Path, scheduler_class: str) -> None:
    """Every part model_index.json lists, except the UNet and the scheduler (replaced), and the index naming the new
    scheduler; the studio's teacher.json manifest is not a pipeline part and stays behind."""
    index = json.loads((teacher_folder / "model_index.json").read_text())
    for part, entry in index.items():
        if part in ("unet", "scheduler") or part.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        shutil.copytree(teacher_folder / part, dest / part)
    index["scheduler"] = ["diffusers", scheduler_class]
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out: {out} is not an empty folder")


def export_student(task, spec: dict, teacher_folder: Path | None, out: Path | str, *, source: str | None = None,
                   step: int | None = None, merge: bool = False) -> dict:
    """Write `task.student` as a diffusers pipeline folder at `out` (absent or empty); returns a summary with the
    folder, pipeline and scheduler classes, k, the trained timesteps and the lines that load and call it.

    A LoRA student of an SD/SDXL teacher is written as its LoRA weights (pytorch_lora_weights.safetensors, which the
    teacher's pipeline takes with `load_lora_weights`) and the student's scheduler; with `merge` (and always for the
    class-conditional and unconditional teachers, whose pipelines load no LoRA) as a full pipeline with the adapters
    folded in, beside the adapters in peft's format (adapter_model.safetensors, adapter_config.json).

    `source` (the student's reference, run:ID or its folder) and `step` (its training step) go into export.json.
    All or nothing: the folder is written beside `out` and renamed into place."""
    manifest = check_exportable(spec, teacher_folder)
    out = Path(out).expanduser().absolute()
    _check_out(out)
    kind = manifest.get("kind", "diffusers")
    num_classes = int(manifest.get("num_classes", 0))
    unet = _student_unet(task, kind)
    lora = is_lora(task.student)
    lora_only = lora and kind in SD_KINDS and not merge
    if lora:
        unet = merged_unet(task.student)
    alphas_cumprod, timestep_scale, timesteps = stand_in(task.schedule, student_times(task))
    renoising = "one-step" if len(timesteps) == 1 else RENOISING[spec["method"]]
    if kind == "builtin":
        schedule_cfg = _stand_in_config(alphas_cumprod)
    else:
        schedule_cfg = json.loads((Path(teacher_folder) / "scheduler" / "scheduler_config.json").read_text())
    scheduler = _scheduler(renoising, schedule_cfg, manifest["prediction_type"], timesteps)
    exact_steps = _check_scheduler(scheduler, alphas_cumprod, timesteps)
    pipeline_class = SD_KINDS.get(kind, CLASS_PIPELINE if num_classes else "DDPMPipeline")
    if not exact_steps and pipeline_class == "DDPMPipeline":
        raise ValueError(f"steps: {type(scheduler).__name__} samples {len(timesteps)} steps at other levels than the "
                         f"student's {timesteps}, and DDPMPipeline takes no explicit timesteps")
    if num_classes:
        # Studio class ids 0..n (n the null class) -> the UNet's labels, by the studio's own mapping.
        class_labels_map = task.student.net.labels(torch.arange(num_classes + 1)).tolist()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if lora:
            _save_adapters(tmp, task, kind, pipeline_class, lora_only)
        if lora_only:
            scheduler.save_pretrained(tmp / "scheduler")
        elif kind in SD_KINDS:
            _copy_sd_parts(Path(teacher_folder), tmp, type(scheduler).__name__)
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
            scheduler.save_pretrained(tmp / "scheduler")
        elif pipeline_class == CLASS_PIPELINE:
            _save_class_pipeline(tmp, unet, scheduler, class_labels_map, timestep_scale)
        else:
            from diffusers import DDPMPipeline
            DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        record = {"student": source, "step": step, "teacher": spec["teacher"], "teacher_hash": spec.get("teacher_hash"),
                  "method": spec["method"], "preset": spec.get("preset"), "steps": len(timesteps),
                  "timesteps": timesteps, "sampler": renoising, "pipeline_class": pipeline_class,
                  "scheduler_class": type(scheduler).__name__, "guidance_scale": 1.0,
                  "exact_num_inference_steps": exact_steps, "num_classes": num_classes,
                  "lora": ("weights" if lora_only else "merged") if lora else None}
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is meant to be shared
        _check_out(out)
        os.replace(tmp, out)  # onto an absent or empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    lines = (_lora_lines(out, Path(teacher_folder), type(scheduler).__name__, timesteps, exact_steps) if lora_only
             else _load_lines(out, pipeline_class, timesteps, exact_steps, num_classes))
    return {**record, "out": str(out), "load": lines}


def _save_adapters(folder: Path, task, kind: str, pipeline_class: str, diffusers_format: bool) -> None:
    """The student's adapters: diffusers' LoRA file for an SD/SDXL pipeline's load_lora_weights, else peft's format."""
    weights = adapter_weights(task.student)
    if diffusers_format:
        import diffusers

        getattr(diffusers, pipeline_class).save_lora_weights(folder, unet_lora_layers=weights, safe_serialization=True)
        return
    from safetensors.torch import save_file

    save_file(weights, str(folder / "adapter_model.safetensors"))
    cfg = task.config
    lora_config(cfg.lora_rank, cfg.lora_target_modules).save_pretrained(folder)


def _lora_lines(folder: Path, teacher_folder: Path, scheduler_class: str, timesteps: list[int],
                exact_steps: bool) -> list[str]:
    steps = f"num_inference_steps={len(timesteps)}" if exact_steps else f"timesteps={timesteps}"
    return [f"from diffusers import DiffusionPipeline, {scheduler_class}",
            f"pipe = DiffusionPipeline.from_pretrained({str(teacher_folder)!r})",
            f"pipe.scheduler = {scheduler_class}.from_pretrained({str(folder)!r}, subfolder='scheduler')",
            f"pipe.load_lora_weights({str(folder)!r})",
            f"images = pipe({EXAMPLE_PROMPT!r}, {steps}, guidance_scale=1.0).images"]
