"""The feature-extractor registry: `inception`, `digits`, `shapes` and `toy2d`.

An image extractor takes what clean-fid's folder loader yields, a float batch [B,3,H,W] of values in 0..255, and
returns features [B,D], so it can be passed to clean-fid as `custom_feat_extractor` together with `resize_for(name)`
as `custom_fn_resize`. `toy2d` takes points [B,2] and returns them: for 2-D data the coordinates are the features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.metrics.convert import keep_size

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"
CLEAN_FID_DIR = Path("/tmp")  # where clean-fid itself downloads the file on Linux and macOS (cleanfid.features)


@dataclass(frozen=True)
class ExtractorInfo:
    name: str
    kind: str  # "image" (clean-fid batches [B,3,H,W] in 0..255) or "points" ([B,2])
    dims: int  # feature size D
    resolution: int | None  # the size the images are resized to before the network; None: none (points)
    description: str


EXTRACTORS: dict[str, ExtractorInfo] = {
    "inception": ExtractorInfo("inception", "image", 2048, 299,
                               "clean-fid's standard Inception-V3 (torchscript inception-2015-12-05.pt), clean mode; "
                               "needs the weights file on disk"),
    "digits": ExtractorInfo("digits", "image", 64, 16,
                            "the studio's digits classifier (small CNN, shipped weights): 64-d penultimate features"),
    "shapes": ExtractorInfo("shapes", "image", 96, 32,
                            "the studio's shapes attribute classifier (small CNN, shipped weights): 96-d pooled "
                            "last-conv features"),
    "toy2d": ExtractorInfo("toy2d", "points", 2, None, "2-D points: the coordinates themselves"),
}


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights are not on disk; nothing is ever downloaded."""


class Points(nn.Module):
    """The `toy2d` extractor: [B,2] -> [B,2] float coordinates."""

    extractor_name = "toy2d"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"toy2d extractor: expected points [B, 2], got shape {tuple(x.shape)}")
        return x.float()


def get_info(name: str) -> ExtractorInfo:
    if name not in EXTRACTORS:
        raise ValueError(f"extractor: unknown name {name!r} (known: {', '.join(EXTRACTORS)})")
    return EXTRACTORS[name]


def get_extractor(name: str, device: str = "cpu", *, weights_dir: Path | str | None = None) -> nn.Module:
    """The extractor `name` on `device`, in eval mode; clean-fid accepts it as `custom_feat_extractor`.

    weights_dir: the folder holding inception-2015-12-05.pt (only `inception` reads it). Default: look in
    ~/.cache/distill-studio, then in clean-fid's own download folder (/tmp).
    """
    get_info(name)
    if name == "inception":
        model = load_inception(weights_dir)
    elif name == "digits":
        from core.metrics.digits_classifier import DigitsExtractor, load_classifier  # lazy: `python -m` runs it

        model = DigitsExtractor(load_classifier())
    elif name == "shapes":
        from core.metrics.shapes_classifier import ShapesExtractor
        from core.metrics.shapes_classifier import load_classifier as load_shapes

        model = ShapesExtractor(load_shapes())
    else:
        model = Points()
    return model.to(device).eval().requires_grad_(False)


def resize_for(name: str) -> Callable | None:
    """clean-fid's `custom_fn_resize` for `name`: None (its clean 299 resize) for inception, else no resize."""
    info = get_info(name)
    if info.kind != "image":
        raise ValueError(f"extractor: {name!r} works on points, not on images")
    return None if name == "inception" else keep_size


def inception_dirs(weights_dir: Path | str | None = None) -> list[Path]:
    """Folders searched for the Inception file: `weights_dir` alone if given, else the two defaults."""
    if weights_dir is not None:
        return [Path(weights_dir)]
    return [Path("~/.cache/distill-studio").expanduser(), CLEAN_FID_DIR]


def load_inception(weights_dir: Path | str | None = None) -> nn.Module:
    """clean-fid's InceptionV3W from a local file; InceptionWeightsMissing at once if there is none."""
    dirs = inception_dirs(weights_dir)
    found = [d for d in dirs if (d / INCEPTION_FILE).is_file()]
    if not found:
        where = " nor ".join(str(d) for d in dirs)
        raise InceptionWeightsMissing(
            f"extractor 'inception': weights file {INCEPTION_FILE} not found in {where}; this machine cannot "
            f"download it. Copy {INCEPTION_FILE} (from {INCEPTION_URL}) into {dirs[0]}/ "
            f"or pass the folder holding it as weights_dir")
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(found[0]), download=False, resize_inside=False)
    model.extractor_name = "inception"
    return model
