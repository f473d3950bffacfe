"""Imported teachers: a local diffusers folder, checked end to end and copied, all or nothing.

Two families are accepted (the pipeline class is read from model_index.json `_class_name`):
- DDPM-style folders (what `DDPMPipeline.save_pretrained` writes, or no model_index.json): unet/config.json of a
  UNet2DModel with safetensors weights and scheduler/scheduler_config.json with `prediction_type` epsilon,
  v_prediction or sample. A class-conditional UNet2DModel needs the user to name its null class.
- Stable Diffusion 1.x/2.x and SDXL pipelines (core/teachers/imported_sd.py).
Anything else is refused with a message that names what is wrong, and nothing is registered.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from core.catalogue import MANIFEST, imported_dir, text_to_image_refusal
from core.denoisers import PREDICTION_TYPES, NetworkDenoiser, diffusers_denoiser
from core.schedules import DiscreteSchedule
from core.specs import BUILTIN_TEACHERS, check_name

# Pipelines whose folders hold an unconditional (or class-labelled) UNet2DModel with a DDPM-compatible scheduler.
DDPM_PIPELINES = ("DDPMPipeline", "DDIMPipeline")


class TeacherImportError(ValueError):
    """A folder that cannot be imported; the message names the problem."""


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise TeacherImportError(f"{what} is missing: expected {path}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TeacherImportError(f"{what} at {path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise TeacherImportError(f"{what} at {path} is not a JSON object")
    return doc


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def ddpm_alphas_cumprod(sched_cfg: dict, what: str = "scheduler config") -> torch.Tensor:
    """The discrete schedule's alphas_cumprod (float64), through DDPMScheduler so every beta schedule maps alike."""
    from diffusers import DDPMScheduler

    try:
        alphas_cumprod = DDPMScheduler.from_config(sched_cfg).alphas_cumprod.double()
        DiscreteSchedule(alphas_cumprod)
    except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
        raise TeacherImportError(f"{what} cannot build a DDPM schedule ({exc})") from None
    return alphas_cumprod


def _check_classes(unet_cfg: dict, null_class: int | None) -> tuple[int, int | None]:
    """(studio num_classes, the model's null label) for a UNet2DModel config; refuses what cannot be conditioned."""
    embed_type, embeds = unet_cfg.get("class_embed_type"), unet_cfg.get("num_class_embeds")
    if embed_type:
        raise TeacherImportError(f"unsupported: class-conditional UNet2DModel folders with class_embed_type "
                                 f"{embed_type!r} are not supported; import one with num_class_embeds or an unconditional model")
    if not embeds:
        if null_class is not None:
            raise TeacherImportError("null_class: the UNet is unconditional (no num_class_embeds); leave --null-class out")
        return 0, None
    if null_class is None:
        raise TeacherImportError(f"unsupported: class-conditional UNet2DModel folders have no agreed null class; "
                                 f"pass --null-class K, the label it was trained to treat as unconditional "
                                 f"(0 <= K < num_class_embeds {embeds})")
    if embeds < 2:
        raise TeacherImportError(f"unet: num_class_embeds {embeds} leaves no class besides the null class")
    if not 0 <= null_class < embeds:
        raise TeacherImportError(f"null_class: must be in [0, {embeds - 1}] (num_class_embeds {embeds}), got {null_class}")
    return embeds - 1, null_class


def _load_parts(folder: Path, null_class: int | None = None):
    """Load and check the UNet and the scheduler; returns (unet, alphas_cumprod, prediction_type, num_classes,
    null_class)."""
    from diffusers import UNet2DModel

    unet_cfg = _read_json(folder / "unet" / "config.json", "unet config")
    cls = unet_cfg.get("_class_name")
    if cls != "UNet2DModel":
        raise TeacherImportError(f"unsupported model class {cls!r} in unet/config.json (only UNet2DModel is supported)")
    num_classes, null_class = _check_classes(unet_cfg, null_class)
    sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
    prediction_type = sched_cfg.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise TeacherImportError(f"unsupported prediction_type {prediction_type!r} (supported: {', '.join(PREDICTION_TYPES)})")
    weights = list((folder / "unet").glob("*.safetensors"))
    if not weights:
        raise TeacherImportError("no safetensors weights in unet/ (re-save the pipeline with safe_serialization=True; "
                                 "pickled .bin weights are refused)")
    alphas_cumprod = ddpm_alphas_cumprod(sched_cfg)
    try:
        unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True, use_safetensors=True,
                                           low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many types for corrupt or truncated files
        raise TeacherImportError(f"cannot load the UNet weights ({_first_line(exc)})") from None
    if unet.config.in_channels != unet.config.out_channels:
        raise TeacherImportError(f"UNet out_channels ({unet.config.out_channels}) must equal in_channels "
                                 f"({unet.config.in_channels}); learned-variance outputs are not supported")
    return unet, alphas_cumprod, prediction_type, num_classes, null_class


def _denoiser(unet, alphas_cumprod, prediction_type, num_classes=0, null_class=None) -> NetworkDenoiser:
    return diffusers_denoiser(unet, DiscreteSchedule(alphas_cumprod), prediction_type, num_classes, null_class)


def _inspect_ddpm(folder: Path, null_class: int | None) -> dict:
    unet, acp, prediction_type, num_classes, null_class = _load_parts(folder, null_class)
    denoiser = _denoiser(unet, acp, prediction_type, num_classes, null_class).eval()
    z = torch.randn((1, *denoiser.data_shape), generator=torch.Generator().manual_seed(0))
    conds = [None] + ([torch.zeros(1, dtype=torch.long)] if num_classes else [])  # the null class, then class 0
    for cond in conds:
        with torch.no_grad():
            x = denoiser(z, torch.tensor([0.5], dtype=torch.float64), cond)
        if x.shape != z.shape or not bool(torch.isfinite(x).all()):
            raise TeacherImportError(f"a test forward pass gave shape {tuple(x.shape)} (expected {tuple(z.shape)}) "
                                     "or non-finite values")
    fields = {"kind": "diffusers", "data_shape": list(denoiser.data_shape), "num_classes": num_classes,
              "prediction_type": prediction_type, "num_train_timesteps": int(acp.numel()),
              "parameters": sum(p.numel() for p in unet.parameters())}
    if num_classes:
        fields |= {"null_class": null_class, "num_class_embeds": num_classes + 1}
    return fields


def pipeline_class(folder: Path) -> str | None:
    """model_index.json's `_class_name`, or None for a bare DDPM-style folder without one."""
    if not (folder / "model_index.json").exists():
        return None
    return _read_json(folder / "model_index.json", "model_index: model_index.json").get("_class_name")


def inspect_folder(path: Path | str, null_class: int | None = None) -> dict:
    """Check a diffusers folder end to end (configs, weights, one forward pass); returns its manifest fields."""
    from core.teachers.imported_sd import SD_PIPELINES, inspect_sd

    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"path: {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"path: {folder} is not a folder")
    cls = pipeline_class(folder)
    if cls in SD_PIPELINES:
        if null_class is not None:
            raise TeacherImportError(f"null_class: {cls} folders are prompt-conditioned, not class-conditional; "
                                     "leave --null-class out")
        return inspect_sd(folder, cls)
    if cls is None or cls in DDPM_PIPELINES:
        return _inspect_ddpm(folder, null_class)
    supported = ", ".join((*DDPM_PIPELINES, *SD_PIPELINES))
    raise TeacherImportError(f"model_index: unsupported pipeline class {cls!r} in model_index.json (supported: {supported})")


def _copy_parts(src: Path, tmp: Path, fields: dict) -> None:
    if fields["kind"] == "diffusers":
        for part in ("unet", "scheduler"):
            shutil.copytree(src / part, tmp / part)
        return
    from core.teachers.imported_sd import copy_sd_parts
    copy_sd_parts(src, tmp, fields["kind"])


def import_folder(path: Path | str, name: str, data_dir: Path | str, null_class: int | None = None) -> dict:
    """Check `path`, copy it to DATA_DIR/teachers/NAME and write its manifest. All or nothing."""
    check_name(name, "name")
    if name in BUILTIN_TEACHERS:
        raise ValueError(f"name: {name!r} is a built-in teacher; choose another name")
    dest = imported_dir(data_dir) / name
    if dest.exists():
        raise ValueError(f"name: a teacher called {name!r} is already imported ({dest})")
    src = Path(path).expanduser().resolve()
    fields = inspect_folder(src, null_class)
    dest.parent.mkdir(parents=True, exist_ok=True)
    described = f"{fields['pipeline_class']} ({fields['resolution']} px) " if "resolution" in fields else ""
    manifest = {"name": name, "source": str(src), "imported_unix": time.time(),
                "description": f"{described}imported from {src}", **fields}
    # Copy into a temporary sibling, then rename: a failed copy leaves nothing registered.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        _copy_parts(src, tmp, fields)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_imported(folder: Path, device="cpu") -> NetworkDenoiser:
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"teacher: {folder} has no {MANIFEST}")
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("kind", "diffusers") != "diffusers":
        raise ValueError(text_to_image_refusal(manifest["name"]))
    unet, acp, prediction_type, num_classes, null_class = _load_parts(folder, manifest.get("null_class"))
    return _denoiser(unet, acp, prediction_type, num_classes, null_class).to(device).eval().requires_grad_(False)
