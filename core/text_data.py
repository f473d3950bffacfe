"""Training batches for a latent text-to-image teacher: prompts for the data-free methods, real latents with their
captions for the methods that need images (docs/methods.md#text-to-image-teachers).

Real images are encoded through the teacher's VAE once and cached as safetensors, keyed by the images, the captions,
the VAE and the resolution, so a second run on the same folder and teacher reads the cache instead of encoding again.
A batch draws its rows from the loop's per-step generator, so a resumed run draws the same rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from core.datasets import ImageFolder
from core.nets import parameter_hash
from core.text_cond import TextCond

Encode = Callable[[list[str]], TextCond]
ENCODE_BATCH = 16  # images per VAE call while filling the cache


class PromptBatches:
    """sample_batch for the data-free methods: `batch_size` prompts drawn with replacement, encoded."""

    def __init__(self, prompts: Sequence[str], encode: Encode):
        if not prompts:
            raise ValueError("prompts: the prompt set is empty")
        self.prompts, self.encode = list(prompts), encode

    def __call__(self, batch_size: int, generator: torch.Generator) -> dict:
        rows = torch.randint(len(self.prompts), (batch_size,), generator=generator).tolist()
        return {"cond": self.encode([self.prompts[i] for i in rows])}


class SceneBatches:
    """sample_batch from a built-in benchmark's generator (shapes): freshly drawn training scenes' captions, encoded
    ("cond"), and with `images` their latents ("x", the VAE's posterior mean x scaling_factor, as the cache holds)."""

    def __init__(self, vae: torch.nn.Module, scaling_factor: float, encode: Encode, images: bool):
        self.vae, self.scaling_factor, self.encode, self.images = vae, scaling_factor, encode, images

    @torch.no_grad()
    def __call__(self, batch_size: int, generator: torch.Generator) -> dict:
        from core.teachers.shapes_parts import scene_batch

        pixels, captions = scene_batch(batch_size, generator)
        batch = {"cond": self.encode(captions)}
        if self.images:
            vae_device = next(self.vae.parameters()).device
            batch["x"] = self.vae.encode(pixels.to(vae_device)).latent_dist.mean * self.scaling_factor
        return batch


class LatentBatches:
    """sample_batch for the methods that need data: cached latents ("x") and their captions, encoded ("cond").

    The cache is memory-mapped and read a row at a time, so a dataset larger than memory still trains."""

    def __init__(self, cache: Path, captions: Sequence[str], encode: Encode):
        self.file = safe_open(str(cache), framework="pt")
        self.latents = self.file.get_slice("latents")
        if self.latents.get_shape()[0] != len(captions):
            raise ValueError(f"data: the latent cache {cache} holds {self.latents.get_shape()[0]} rows for "
                             f"{len(captions)} captions; delete it to encode again")
        self.captions, self.encode = list(captions), encode

    def __call__(self, batch_size: int, generator: torch.Generator) -> dict:
        rows = torch.randint(len(self.captions), (batch_size,), generator=generator).tolist()
        x = torch.cat([self.latents[i:i + 1] for i in rows])
        return {"x": x, "cond": self.encode([self.captions[i] for i in rows])}


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """An RGB image as [3, R, R] in [-1, 1], downsized to the teacher's resolution (read_image_folder checked it is
    square and at least that large)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0


def cache_key(dataset: ImageFolder, vae: torch.nn.Module, resolution: int, scaling_factor: float) -> str:
    """sha256 of what the cached latents depend on: every listed image's bytes and caption, the VAE's weights, the
    resolution and the latent scale."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"resolution": resolution, "scaling_factor": scaling_factor,
                              "vae": parameter_hash(vae)}).encode())
    for file, caption in dataset.items:
        digest.update(json.dumps([file, caption]).encode())
        digest.update(hashlib.sha256((dataset.root / file).read_bytes()).digest())
    return digest.hexdigest()


@torch.no_grad()
def encode_images(dataset: ImageFolder, vae: torch.nn.Module, resolution: int, scaling_factor: float,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Latents as the UNet sees them (the posterior mean times `scaling_factor`, diffusers' scaling) [N, C, h, w]."""
    device = next(vae.parameters()).device
    out = []
    for lo in range(0, dataset.count, ENCODE_BATCH):
        files = [dataset.root / file for file, _ in dataset.items[lo:lo + ENCODE_BATCH]]
        images = torch.stack([load_image(f, resolution) for f in files]).to(device)
        # The mean, not a draw: the cached dataset is then a function of the images alone [choice].
        out.append((vae.encode(images).latent_dist.mean * scaling_factor).float().cpu())
        if progress:
            progress(min(lo + ENCODE_BATCH, dataset.count), dataset.count)
    return torch.cat(out)


def latent_cache(dataset: ImageFolder, vae: torch.nn.Module, resolution: int, scaling_factor: float, cache_dir: Path,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """The cache file of `dataset`'s latents, encoding them first if no run made it before."""
    key = cache_key(dataset, vae, resolution, scaling_factor)
    path = Path(cache_dir) / f"{key}.safetensors"
    if not path.is_file():
        latents = encode_images(dataset, vae, resolution, scaling_factor, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file({"latents": latents.contiguous()}, str(partial), metadata={"images": str(dataset.count)})
        partial.replace(path)  # never a torn cache: the name appears only once the file is whole
    return path
