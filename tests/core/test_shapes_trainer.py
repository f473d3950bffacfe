"""The `shapes` teacher's two-stage training, end to end at a tiny size: the VAE stage, the latent scale, the text
encoder + UNet stage, and a StableDiffusionPipeline folder that diffusers loads and runs and the studio imports."""

from __future__ import annotations

import numpy as np

from core.specs import TrainConfig
from core.teachers.shapes_parts import ShapesArchitecture
from core.teachers.shapes_trainer import train_shapes

TINY = ShapesArchitecture(
    vae=dict(ShapesArchitecture().vae, block_out_channels=(16, 16), norm_num_groups=8),
    text=dict(ShapesArchitecture().text, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, projection_dim=16),
    unet=dict(ShapesArchitecture().unet, block_out_channels=(16, 16, 32), cross_attention_dim=16, attention_head_dim=4,
              norm_num_groups=8))
STEPS = TrainConfig(iterations=2, batch_size=4, checkpoint_every=2, log_every=1, preview_every=2,
                    preview_seeds=(0, 1))


def test_two_stages_give_a_pipeline_diffusers_runs_and_the_studio_imports(tmp_path):
    from diffusers import StableDiffusionPipeline

    from core.teachers.imported import import_folder

    result = train_shapes(tmp_path / "shapes", arch=TINY, vae_config=STEPS, unet_config=STEPS)
    folder = result.pipeline
    assert (result.status, result.stage, result.step) == ("completed", "unet", STEPS.iterations)
    assert result.cpu_minutes > 0
    assert (tmp_path / "shapes" / "vae" / "previews").is_dir() and (tmp_path / "shapes" / "unet" / "previews").is_dir()
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert 0.01 < pipe.vae.config.scaling_factor < 100
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a large red circle in the centre, on a white background", num_inference_steps=2, guidance_scale=4.0,
                 output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    manifest = import_folder(folder, "shapes-tiny", tmp_path / "data")
    assert (manifest["kind"], manifest["resolution"], manifest["data_shape"]) == ("sd", 32, [4, 16, 16])

