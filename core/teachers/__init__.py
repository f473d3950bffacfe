"""Teachers: load any teacher by name as a Denoiser, and train the built-in ones with the one loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from core.catalogue import check_trainable, get_teacher_info, imported_dir, pipeline_folder
from core.data import get_benchmark
from core.denoisers import Denoiser
from core.specs import TrainConfig
from core.teachers.builtin import build_network_denoiser, load_builtin
from core.teachers.trainer import DenoiserTrainer
from core.train import TrainResult, run_training


def load_teacher(name: str, data_dir: Path | str | None = None, device="cpu") -> Denoiser:
    """The teacher's denoiser in eval mode with frozen parameters (a text-to-image teacher's latent denoiser, whose
    condition is a TextCond: load_text_to_image_teacher gives its prompt encoder and VAE too)."""
    info = get_teacher_info(name, data_dir)
    if info.is_text_to_image:
        return load_text_to_image_teacher(name, data_dir, device).denoiser
    if info.builtin:
        return load_builtin(info, device)
    from core.teachers.imported import load_imported
    return load_imported(imported_dir(data_dir) / name, device)


def load_text_to_image_teacher(name: str, data_dir: Path | str | None = None, device="cpu"):
    """A text-to-image teacher (imported SD/SDXL, or the built-in shapes) as a core.teachers.sd_teacher.SDTeacher
    (denoiser, prompt encoder, VAE)."""
    info = get_teacher_info(name, data_dir)
    if not info.is_text_to_image:
        raise ValueError(f"teacher: {name!r} is not a text-to-image teacher")
    from core.teachers.sd_teacher import load_sd_teacher

    folder = pipeline_folder(info, data_dir)
    if not (folder / "teacher.json").is_file():
        raise FileNotFoundError(f"teacher {name!r}: its pipeline folder {folder} is missing; train it with "
                                f"`distill-studio teachers train {name} --install`")
    return load_sd_teacher(folder, device)


def train_builtin_teacher(name: str, out_dir: Path | str, *, config: TrainConfig | None = None, device="cpu",
                          resume: bool = True, on_progress=None, should_stop=None, on_preview=None,
                          on_checkpoint=None) -> TrainResult:
    """Train a built-in teacher from scratch (or resume) with the studio's own loop."""
    info = check_trainable(name)
    config = config or info.train
    torch.manual_seed(config.seed)  # network initialisation
    denoiser = build_network_denoiser(info)
    trainer = DenoiserTrainer(denoiser, config, device=device)
    benchmark = get_benchmark(info.benchmark)
    spec = {"name": name, "kind": "teacher", "teacher": dataclasses.replace(info, train=config).to_dict()}
    return run_training(trainer, benchmark.sample_batch, config, out_dir=out_dir, spec=spec, device=device,
                        resume=resume, on_progress=on_progress, should_stop=should_stop, on_preview=on_preview,
                        on_checkpoint=on_checkpoint)
