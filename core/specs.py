"""Torch-free configuration: training knobs and the built-in teacher catalogue.

Imported by the web app to render forms and validate input, so it must never import torch.
TrainConfig is a knob model (core/knobs.py): each field carries its why and bounds, and validation enforces them.
The other records here are frozen dataclasses that validate themselves and round-trip through plain dicts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar

from pydantic import model_validator

from core.knobs import PRECISIONS, KnobModel, knob
from core.prompts import prompt_problem
from core.refs import parse_ref

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"{what}: {name!r} is not a valid name (lowercase letters, digits, '-' or '_', "
                         "starting with a letter or digit, at most 64 characters)")
    return name


class TrainConfig(KnobModel):
    """Knobs of the one training loop (`core.train.run_training`) plus the optimizer of a denoiser trainer."""

    key: ClassVar[str] = "train"
    iterations: int = knob(3000, "choice", "~95% class accuracy for the digits teacher on this CPU budget", ge=1)
    batch_size: int = knob(128, "choice", "~0.5 s per step for a 1.1M-parameter UNet at 16x16 on 2 cores", ge=1)
    lr: float = knob(1e-3, "choice", "Adam on tiny networks; warm-up + cosine decay keeps it stable", gt=0)
    warmup: int = knob(100, "choice", "avoids the early Adam blow-up on freshly initialised UNets", ge=0)
    grad_clip: float = knob(1.0, "choice", "standard for diffusion training, guards against rare spikes", gt=0)
    ema_decay: float = knob(0.999, "choice", "EMA weights sample visibly cleaner at ~3k steps; 0 disables", ge=0, lt=1)
    cond_drop: float = knob(0.1, "choice", "label dropout so the teacher also learns the null class (CFG)", ge=0, lt=1)
    t_shift: float = knob(1.0, "paper", "timestep shift (SD3, Esser et al. 2024): t = s u / (1 + (s - 1) u) for u "
                          "uniform, so s > 1 trains the layout-deciding high noise levels more; 1 is uniform", gt=0)
    seed: int = knob(0, "choice", "every run is reproducible; resume is exact")
    precision: str = knob("fp32", "choice", "a teacher trainer's forward passes: fp32, or bf16 autocast with fp32 master "
                          "weights (a distillation run takes its method's precision knob)", choices=PRECISIONS)
    grad_accum: int = knob(1, "choice", "micro-batches per optimizer step: batch_size / grad_accum examples in memory at "
                           "once, the same step as the whole batch", ge=1)
    checkpoint_every: int = knob(500, "choice", "at most a few minutes of CPU work lost on a crash", ge=1)
    keep_checkpoints: int = knob(2, "choice", "the latest plus one spare in case the newest is cut off mid-write", ge=1)
    log_every: int = knob(25, "choice", "a progress line and a metrics row every ~10 s on CPU", ge=1)
    preview_every: int = knob(500, "choice", "a preview grid per checkpoint interval", ge=1)
    # A list (JSON's form of it) is read as a tuple, so configs stay hashable after a round trip.
    preview_seeds: tuple[int, ...] = knob(tuple(range(16)), "choice", "one 4x4 grid of previews", min_length=1,
                                          strict=False)

    @model_validator(mode="after")
    def _whole_micro_batches(self):
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train: batch_size ({self.batch_size}) must be a multiple of grad_accum "
                             f"({self.grad_accum}), which splits it into equal micro-batches")
        return self

    @classmethod
    def _unknown_message(cls, unknown: list[str]) -> str:
        return f"train: unknown field(s) {', '.join(unknown)}"

    def to_dict(self) -> dict:
        d = self.model_dump()
        d["preview_seeds"] = list(self.preview_seeds)
        return d


TEXT_TO_IMAGE_KINDS = ("sd", "sdxl")


@dataclass(frozen=True)
class TeacherInfo:
    """What the UI and CLI need to know about a teacher without loading it."""

    name: str
    benchmark: str                  # data it models: toy2d-ring, toy2d-grid, digits, or "imported"
    kind: str                       # analytic | mlp | unet | diffusers | sd | sdxl (text-to-image, latent)
    data_shape: tuple[int, ...]
    num_classes: int = 0
    prediction_type: str = "sample"
    description: str = ""
    trainable: bool = False         # built-in and trained by `teachers train`
    train: TrainConfig | None = None
    builtin: bool = True
    source: str = ""                # imported teachers: the folder they came from
    null_class: int | None = None   # imported class-conditional UNets: the model's own null label
    resolution: int = 0             # text-to-image teachers: image side in pixels (data_shape is the latent)

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    @property
    def is_text_to_image(self) -> bool:
        return self.kind in TEXT_TO_IMAGE_KINDS

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["data_shape"] = list(self.data_shape)
        d["train"] = self.train.to_dict() if self.train else None
        return d


_TOY_TRAIN = TrainConfig(iterations=8000, batch_size=512, lr=1e-3, warmup=100, ema_decay=0.999, cond_drop=0.0,
                         checkpoint_every=1000, log_every=50, preview_every=1000, preview_seeds=tuple(range(512)))

# The shapes teacher's recipe [choice], sized for about two hours on 2 cores: stage 1 fits the VAE (~0.7 s per step;
# it reconstructed 98.6 % of test scenes with every attribute right after 1,500 steps and was still improving), stage 2
# the text encoder and UNet (~0.45 s per step). `iterations` of the teacher is stage 2's. Stage 2 draws its times with
# SD3's shift 3 (core.teachers.trainer.training_times): with v-prediction and the shift, a pilot from scratch put
# objects on the named side for 92.5 % of held-out objects after 400 steps, where the uniform epsilon recipe never did.
SHAPES_VAE_TRAIN = TrainConfig(iterations=3000, batch_size=64, lr=1e-3, warmup=100, ema_decay=0.999, grad_clip=1.0,
                               checkpoint_every=250, log_every=50, preview_every=1000, preview_seeds=tuple(range(8)))
SHAPES_TRAIN = TrainConfig(iterations=3000, batch_size=64, lr=5e-4, warmup=200, ema_decay=0.999, grad_clip=1.0,
                           t_shift=3.0, cond_drop=0.0, checkpoint_every=250, log_every=50, preview_every=2000,
                           preview_seeds=tuple(range(8)))

# The shapes teacher's default classifier-free guidance weight: its presets, and the guidance its quality is stated at.
SHAPES_GUIDANCE = 4.0
# Imported pipelines' own defaults (diffusers' guidance_scale, the same w as core.denoisers.CFGDenoiser): SD 7.5, SDXL 5.
PIPELINE_GUIDANCE = {"sd": 7.5, "sdxl": 5.0}


def default_guidance(info: TeacherInfo) -> float:
    """The guidance a text-to-image teacher is drawn with unless told otherwise (1: none, for every other teacher)."""
    if info.benchmark == "shapes":
        return SHAPES_GUIDANCE
    return PIPELINE_GUIDANCE.get(info.kind, 1.0)

BUILTIN_TEACHERS: dict[str, TeacherInfo] = {
    "toy2d-ring-gmm": TeacherInfo("toy2d-ring-gmm", "toy2d-ring", "analytic", (2,),
                                  description="Exact denoiser of the ring of 8 Gaussians (radius 2, std 0.1)"),
    "toy2d-grid-gmm": TeacherInfo("toy2d-grid-gmm", "toy2d-grid", "analytic", (2,),
                                  description="Exact denoiser of the 5x5 grid of Gaussians (spacing 1, std 0.1)"),
    "toy2d-ring": TeacherInfo("toy2d-ring", "toy2d-ring", "mlp", (2,), prediction_type="v_prediction",
                              description="MLP teacher trained on the ring of 8", trainable=True, train=_TOY_TRAIN),
    "toy2d-grid": TeacherInfo("toy2d-grid", "toy2d-grid", "mlp", (2,), prediction_type="v_prediction",
                              description="MLP teacher trained on the 5x5 grid", trainable=True,
                              # why: 25 tight modes need longer training than the ring to cover all of them
                              train=_TOY_TRAIN.replace(iterations=30000, checkpoint_every=5000, preview_every=5000)),
    "digits": TeacherInfo("digits", "digits", "unet", (1, 16, 16), num_classes=10, prediction_type="v_prediction",
                          description="Class-conditional diffusers UNet2DModel (1.1M params) on 16x16 digits",
                          trainable=True, train=TrainConfig()),
    "shapes": TeacherInfo("shapes", "shapes", "sd", (4, 16, 16), prediction_type="v_prediction", resolution=32,
                          description="StableDiffusionPipeline trained on captioned 32x32 shapes scenes (latents "
                                      "4x16x16, CLIP text encoder over the caption vocabulary)",
                          trainable=True, train=SHAPES_TRAIN),
}

SAMPLER_NAMES = ("ddim", "ancestral")


@dataclass(frozen=True)
class SampleRequest:
    """A validated request to sample a model: what `sample` and the UI's Generate button take."""

    model: str
    seeds: tuple[int, ...]
    steps: int = 50
    class_id: int | None = None
    guidance: float = 1.0
    sampler: str = "ddim"
    eta: float = 0.0
    checkpoint: int | None = None  # a student's training step to sample (its snapshot); None: the final model
    prompts: tuple[str, ...] = ()  # text-to-image teachers: each prompt is sampled at every seed

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        for i, text in enumerate(self.prompts):
            problem = prompt_problem(text) if isinstance(text, str) else "is not text"
            if problem is not None or not text.strip():
                raise ValueError(f"prompt: prompt {i + 1} {problem or 'is empty'}")
        if self.prompts and self.class_id is not None:
            raise ValueError("prompt: a prompt and a class cannot be combined; give one of them")
        if self.checkpoint is not None:
            if isinstance(self.checkpoint, bool) or not isinstance(self.checkpoint, int) or self.checkpoint < 0:
                raise ValueError(f"checkpoint: must be a training step (an integer >= 0), got {self.checkpoint!r}")
            if parse_ref(self.model).is_teacher:
                raise ValueError("checkpoint: only students have checkpoints; a teacher is sampled as it is")
        if any((not isinstance(s, int)) or s < 0 or s >= 2**63 for s in self.seeds):
            raise ValueError("seeds: each seed must be an integer in [0, 2^63)")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps: must be an integer in [1, 1000], got {self.steps!r}")
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"sampler: must be one of {', '.join(SAMPLER_NAMES)}, got {self.sampler!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta: must be in [0, 1], got {self.eta!r}")
        if not 0.0 <= self.guidance <= 20.0:
            raise ValueError(f"guidance: must be in [0, 20], got {self.guidance!r}")


def parse_seeds(text: str, limit: int = 4096) -> tuple[int, ...]:
    """'0-7', '1,5,9' or '3' -> seeds; raises ValueError naming the field."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"seeds: cannot read {part!r} (use e.g. '0-7' or '1,5,9')") from None
        if len(seeds) > limit:
            raise ValueError(f"seeds: at most {limit} seeds at once")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    if any(s < 0 for s in seeds):
        raise ValueError("seeds: seeds must be >= 0")
    return tuple(seeds)



def teacher_training_steps(name: str, iterations: int | None = None) -> int:
    """Steps a `teachers train NAME` run reports progress over: the recipe's (or `iterations`), twice for the shapes
    teacher, whose two stages (VAE, then text encoder + UNet) each take `iterations` when it is given."""
    info = BUILTIN_TEACHERS[name]
    if info.is_text_to_image:
        return 2 * iterations if iterations else SHAPES_VAE_TRAIN.iterations + info.train.iterations
    return iterations or info.train.iterations
