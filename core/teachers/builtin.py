"""Built-in teachers: analytic mixtures, MLPs for toy2d and a class-conditional UNet for digits.

Trained weights ship in core/teachers/weights/NAME.safetensors (+ .json with the spec and training record).
"""

from __future__ import annotations

from pathlib import Path

from core.catalogue import BUILTIN_WEIGHTS_DIR
from core.checkpoints import load_state
from core.data import get_benchmark
from core.denoisers import Denoiser, NetworkDenoiser, diffusers_denoiser
from core.gmm import GMMDenoiser
from core.nets import MLP, build_unet
from core.schedules import CosineSchedule
from core.specs import TeacherInfo

WEIGHTS_DIR = BUILTIN_WEIGHTS_DIR


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def build_network_denoiser(info: TeacherInfo) -> NetworkDenoiser:
    """A freshly initialised network denoiser for a trainable built-in teacher (seed torch first)."""
    schedule = CosineSchedule()
    if info.kind == "mlp":
        net = MLP(dim=info.data_shape[0], hidden=256, depth=3, num_classes=info.num_classes)
        return NetworkDenoiser(net, schedule, info.prediction_type, info.data_shape, info.num_classes,
                               time_input="log_snr")
    if info.kind == "unet":
        unet = build_unet(info.data_shape[-1], info.data_shape[0], info.num_classes)
        return diffusers_denoiser(unet, schedule, info.prediction_type, info.num_classes)
    raise ValueError(f"teacher {info.name!r}: kind {info.kind!r} is not trainable")


def load_builtin(info: TeacherInfo, device="cpu") -> Denoiser:
    if info.kind == "analytic":
        return GMMDenoiser(get_benchmark(info.benchmark).mixture, CosineSchedule()).to(device).eval()
    path = weights_path(info.name)
    if not path.is_file():
        raise FileNotFoundError(f"teacher {info.name!r}: weights {path} are missing; train them with "
                                f"`distill-studio teachers train {info.name} --install`")
    denoiser = build_network_denoiser(info)
    state, _ = load_state(path)
    denoiser.net.load_state_dict(state)
    return denoiser.to(device).eval().requires_grad_(False)
