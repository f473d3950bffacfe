"""Imported teachers: a local diffusers DDPM-style folder (UNet2DModel + scheduler config), checked and copied.

Accepted layout (what `DDPMPipeline.save_pretrained` writes): unet/config.json with safetensors weights and
scheduler/scheduler_config.json with `prediction_type` epsilon, v_prediction or sample. Anything else is
refused with a message that says what is wrong, and nothing is registered.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from core.catalogue import MANIFEST, imported_dir
from core.denoisers import PREDICTION_TYPES, NetworkDenoiser, diffusers_denoiser
from core.schedules import DiscreteSchedule
from core.specs import BUILTIN_TEACHERS, check_name


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


def _load_parts(folder: Path):
    """Load and check the UNet and the scheduler; returns (unet, alphas_cumprod, prediction_type)."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet_cfg = _read_json(folder / "unet" / "config.json", "unet config")
    cls = unet_cfg.get("_class_name")
    if cls != "UNet2DModel":
        raise TeacherImportError(f"unsupported model class {cls!r} in unet/config.json (only UNet2DModel is supported)")
    if unet_cfg.get("num_class_embeds") or unet_cfg.get("class_embed_type"):
        raise TeacherImportError("unsupported: class-conditional UNet2DModel folders have no agreed null class; "
                           "import an unconditional model")
    sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
    prediction_type = sched_cfg.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise TeacherImportError(f"unsupported prediction_type {prediction_type!r} (supported: {', '.join(PREDICTION_TYPES)})")
    weights = list((folder / "unet").glob("*.safetensors"))
    if not weights:
        raise TeacherImportError("no safetensors weights in unet/ (re-save the pipeline with safe_serialization=True; "
                           "pickled .bin weights are refused)")
    try:
        scheduler = DDPMScheduler.from_config(sched_cfg)
        alphas_cumprod = scheduler.alphas_cumprod.double()
        DiscreteSchedule(alphas_cumprod)
    except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
        raise TeacherImportError(f"scheduler config cannot build a DDPM schedule ({exc})") from None
    try:
        unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True, use_safetensors=True,
                                           low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many types for corrupt or truncated files
        raise TeacherImportError(f"cannot load the UNet weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if unet.config.in_channels != unet.config.out_channels:
        raise TeacherImportError(f"UNet out_channels ({unet.config.out_channels}) must equal in_channels "
                           f"({unet.config.in_channels}); learned-variance outputs are not supported")
    return unet, alphas_cumprod, prediction_type


def _denoiser(unet, alphas_cumprod, prediction_type) -> NetworkDenoiser:
    return diffusers_denoiser(unet, DiscreteSchedule(alphas_cumprod), prediction_type)


def inspect_folder(path: Path | str) -> dict:
    """Check a diffusers folder end to end (configs, weights, one forward pass); returns its manifest fields."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"path: {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"path: {folder} is not a folder")
    unet, acp, prediction_type = _load_parts(folder)
    denoiser = _denoiser(unet, acp, prediction_type).eval()
    z = torch.randn((1, *denoiser.data_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = denoiser(z, torch.tensor([0.5], dtype=torch.float64))
    if x.shape != z.shape or not bool(torch.isfinite(x).all()):
        raise TeacherImportError(f"a test forward pass gave shape {tuple(x.shape)} (expected {tuple(z.shape)}) "
                           "or non-finite values")
    return {"data_shape": list(denoiser.data_shape), "num_classes": 0, "prediction_type": prediction_type,
            "num_train_timesteps": int(acp.numel()),
            "parameters": sum(p.numel() for p in unet.parameters())}


def import_folder(path: Path | str, name: str, data_dir: Path | str) -> dict:
    """Check `path`, copy it to DATA_DIR/teachers/NAME and write its manifest. All or nothing."""
    check_name(name, "name")
    if name in BUILTIN_TEACHERS:
        raise ValueError(f"name: {name!r} is a built-in teacher; choose another name")
    dest = imported_dir(data_dir) / name
    if dest.exists():
        raise ValueError(f"name: a teacher called {name!r} is already imported ({dest})")
    src = Path(path).expanduser().resolve()
    fields = inspect_folder(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "source": str(src), "imported_unix": time.time(),
                "description": f"imported from {src}", **fields}
    # Copy into a temporary sibling, then rename: a failed copy leaves nothing registered.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        for part in ("unet", "scheduler"):
            shutil.copytree(src / part, tmp / part)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_imported(folder: Path, device="cpu") -> NetworkDenoiser:
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"teacher: {folder} has no {MANIFEST}")
    unet, acp, prediction_type = _load_parts(folder)
    return _denoiser(unet, acp, prediction_type).to(device).eval().requires_grad_(False)
