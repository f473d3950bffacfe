"""The shipped `shapes` teacher: a StableDiffusionPipeline folder that diffusers itself loads and that draws the scene
its prompt asks for (judged by the shipped attribute classifier), recorded as trained, and loaded by the studio as a
text-to-image teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.catalogue import MANIFEST, pipeline_folder
from core.metrics.alignment import alignment
from core.metrics.shapes_classifier import load_classifier
from core.shapes import evaluation_scenes
from core.specs import BUILTIN_TEACHERS, SHAPES_GUIDANCE, SHAPES_VAE_TRAIN

INFO = BUILTIN_TEACHERS["shapes"]
FOLDER = pipeline_folder(INFO, None)


def test_the_shipped_folder_is_small_safetensors_only_and_records_its_training():
    files = [p for p in FOLDER.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 40 * 2**20, "shipped weights must stay at tens of MB at most"
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert all(p.suffix == ".safetensors" for p in weights)
    manifest = json.loads((FOLDER / MANIFEST).read_text())
    assert (manifest["kind"], manifest["data_shape"], manifest["resolution"]) == ("sd", list(INFO.data_shape), 32)
    record = manifest["training"]
    # The record describes the recipe the catalogue ships, so the README's command reproduces it.
    assert record["command"].startswith("distill-studio teachers train shapes")
    # Stage 2 may have been retrained on an earlier run's autoencoder (`--vae`): the record then keeps that VAE's record.
    vae = record.get("vae_from", record)
    assert record["iterations"] == INFO.train.iterations and vae["vae_iterations"] == SHAPES_VAE_TRAIN.iterations
    assert record["train"]["t_shift"] == INFO.train.t_shift
    assert record["seed"] == INFO.train.seed
    assert record["cpu_minutes"] > 0 and record["git"]


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(FOLDER, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_diffusers_draws_held_out_scenes_with_every_attribute_right(pipe):
    """diffusers' own pipeline from the folder, at 50 steps with the teacher's default guidance, seed 0, on the first
    16 held-out prompts (each shows a colour-shape pair no training scene has), read by the shipped classifier. Why
    13 of 16: benchmarks/shapes_teacher.py measured 94 % of 200 held-out prompts with every attribute right; at that
    rate 12 or fewer of 16 happen about 1 % of the time; the first, side-blind teacher reached 12.5 %. The same
    images read against the next image's prompt must show far fewer attributes: they follow their own prompts."""
    captions = [scene.caption for scene in evaluation_scenes("shapes-heldout", 16)]
    images = pipe(captions, num_inference_steps=50, guidance_scale=SHAPES_GUIDANCE, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (16, 32, 32, 3) and np.isfinite(images).all()
    x = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    own = alignment(load_classifier(), x, captions)
    other = alignment(load_classifier(), x, captions[1:] + captions[:1])
    assert own.all_right >= 13 / 16, own.to_dict()
    assert own.attribute_share > other.attribute_share + 0.1, (own.to_dict(), other.to_dict())


def test_the_studio_loads_it_as_a_text_to_image_teacher():
    from core.teachers import load_teacher, load_text_to_image_teacher

    sd = load_text_to_image_teacher("shapes")
    assert (sd.resolution, sd.denoiser.data_shape) == (32, INFO.data_shape)
    assert load_teacher("shapes").takes_prompts
    assert all(not p.requires_grad for p in sd.denoiser.parameters())


def test_it_imports_like_a_users_pipeline(tmp_path):
    from core.teachers.imported import import_folder

    manifest = import_folder(FOLDER, "my-shapes", tmp_path / "data")
    shipped = json.loads((FOLDER / MANIFEST).read_text())
    assert {k: manifest[k] for k in ("kind", "data_shape", "resolution", "prediction_type", "scaling_factor")} == \
        {k: shipped[k] for k in ("kind", "data_shape", "resolution", "prediction_type", "scaling_factor")}
