"""An imported SD/SDXL teacher against diffusers' own pipelines: the prompt encoder equals `encode_prompt`, and the
studio's guided DDIM equals the pipeline's DDIM from the same initial latents on the same timesteps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.denoisers import CFGDenoiser, nfe_per_call
from core.samplers import ddim
from core.teachers import load_text_to_image_teacher
from core.teachers.imported import import_folder
from core.text_cond import TextCond, cat_cond
from tests.tiny_pipelines import save_tiny_sd

PROMPTS = ["a photograph of a cat", "the dog"]
CASES = {"sd": dict(), "sd-v": dict(prediction_type="v_prediction"), "sdxl": dict(xl=True)}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    root = tmp_path_factory.mktemp("sdt")
    out = {}
    for key, kwargs in CASES.items():
        folder = save_tiny_sd(root / key, **kwargs)
        import_folder(folder, key, root / "data")
        out[key] = (folder, load_text_to_image_teacher(key, root / "data"))
    return out


def _pipeline(folder: Path, xl: bool):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    # "trailing" spacing ends at t = 0 with alpha = 1 (set_alpha_to_one), so its last latent is the last x0 estimate,
    # which is what the studio's DDIM returns.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", steps_offset=0,
                                               set_alpha_to_one=True, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("key", list(CASES))
def test_the_prompt_encoder_equals_the_pipelines_encode_prompt(teachers, key):
    folder, teacher = teachers[key]
    pipe = _pipeline(folder, key == "sdxl")
    cond, null = teacher.encoder.encode(PROMPTS), teacher.encoder.null()
    if key == "sdxl":
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                             do_classifier_free_guidance=True)
        torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=1e-6)
        torch.testing.assert_close(null.pooled, neg_pooled[:1], rtol=0, atol=1e-6)
        r = teacher.resolution
        assert cond.time_ids.tolist() == [[r, r, 0, 0, r, r]] * len(PROMPTS)
    else:
        embeds, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    torch.testing.assert_close(cond.embeds, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(null.embeds, neg[:1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", list(CASES))
def test_guided_ddim_equals_the_diffusers_pipeline_from_the_same_latents(teachers, key):
    folder, teacher = teachers[key]
    pipe = _pipeline(folder, key == "sdxl")
    steps, w = 4, 3.0
    pipe.scheduler.set_timesteps(steps)
    # The studio's DDIM on the pipeline's timesteps (DiscreteSchedule: t = index / (N - 1)), then t = 0.
    grid = torch.cat([pipe.scheduler.timesteps.double() / 999.0, torch.zeros(1, dtype=torch.float64)])
    assert teacher.denoiser.schedule.index(grid[:-1]).tolist() == pipe.scheduler.timesteps.tolist()
    latents = torch.randn((2, *teacher.latent_shape), generator=torch.Generator().manual_seed(1))
    ours = ddim(latents[None], CFGDenoiser(teacher.denoiser, w), grid, teacher.encoder.encode(PROMPTS))
    theirs = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=w, latents=latents.clone(),
                  output_type="latent").images
    # Same operations in float32, only ordered differently (x-space vs eps-space guidance, the batch halves swapped):
    # rounding differences of ~1e-6 per step on latents of order 1, over 4 steps.
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_guidance_doubles_the_nfe_and_w_1_is_the_conditional_model(teachers):
    _, teacher = teachers["sd"]
    assert nfe_per_call(CFGDenoiser(teacher.denoiser, 3.0), conditional=True) == 2
    assert nfe_per_call(CFGDenoiser(teacher.denoiser, 1.0), conditional=True) == 1
    z = torch.randn((1, *teacher.latent_shape), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5], dtype=torch.float64)
    cond = teacher.encoder.encode(PROMPTS[:1])
    with torch.no_grad():
        assert torch.equal(CFGDenoiser(teacher.denoiser, 1.0)(z, t, cond), teacher.denoiser(z, t, cond))
        unguided = CFGDenoiser(teacher.denoiser, 0.0)(z, t, cond)
        torch.testing.assert_close(unguided, teacher.denoiser(z, t, None), rtol=0, atol=1e-5)


def test_text_conditions_index_concatenate_and_expand():
    embeds, pooled, ids = torch.randn(3, 5, 4), torch.randn(3, 2), torch.ones(3, 6)
    cond = TextCond(embeds, pooled, ids)
    assert len(cond) == 3 and len(cond[1]) == 1 and torch.equal(cond[1:].embeds, embeds[1:])
    both = cat_cond([cond, cond[0].expand(3)])
    assert len(both) == 6 and torch.equal(both.pooled[3:], pooled[:1].expand(3, 2))
    assert torch.equal(cat_cond([torch.zeros(2), torch.ones(1)]), torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="cannot concatenate SD and SDXL"):
        TextCond.cat([cond, TextCond(embeds)])
    with pytest.raises(ValueError, match="only a batch of one expands"):
        cond.expand(4)
