"""Every method distils tiny random SD and SDXL teachers through the one training loop: with a prompt file (the
data-free methods) or an image folder (the methods that need images, whose VAE latents are cached once), the guided
teacher costing 2 NFE a call, previews of fixed prompts decoded through the VAE, and an interrupted run resuming
bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.datasets import read_image_folder
from core.denoisers import CFGDenoiser, nfe_per_call
from core.nets import parameter_hash
from core.teachers import load_text_to_image_teacher
from core.teachers.imported import import_folder
from core.text_data import cache_key, encode_images
from core.text_inputs import PREVIEW_PROMPTS, PREVIEW_SEEDS
from tests.tiny_pipelines import save_tiny_sd, write_image_folder, write_prompts
from workers.local import distill

# (method, preset, --set overrides, input): the data-free methods read prompts, the others an image folder.
CASES = {
    "dmd2-sd15": ("dmd2", "sd15", (), "prompts"),                      # 1 step, w = 1.75, no GAN: data-free
    "dmd2-4step-gan": ("dmd2", "4-step", ("guidance=2",), "data"),      # backward simulation + GAN on real latents
    "emd": ("emd", "default", ("guidance=2",), "prompts"),
    "diff-instruct": ("diff-instruct", "default", ("guidance=2",), "prompts"),  # w = 1: a zero first gradient
    "mmd": ("mmd", "4-step", ("guidance=2",), "data"),
    "mmd-instant": ("mmd-instant", "default", ("precond_batches=1", "student_steps=2"), "data"),
}
ITERATIONS = 2  # a generator turn and an auxiliary turn of every alternating method (mmd-instant: 1 preconditioning + 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("t2i")
    data_dir = root / "data"
    for key, xl in (("sd", False), ("sdxl", True)):
        import_folder(save_tiny_sd(root / key, xl=xl), f"{key}-tiny", data_dir)
    return {"root": root, "data_dir": data_dir, "prompts": write_prompts(root / "prompts.txt"),
            "data": write_image_folder(root / "images")}


def _run(world, teacher: str, case: str, out: Path, **kwargs) -> dict:
    method, preset, sets, source = CASES[case]
    return distill(teacher, method, out, preset=preset, sets=sets, iterations=kwargs.pop("iterations", ITERATIONS),
                   batch_size=2, data_dir=world["data_dir"], **{source: world[source]}, **kwargs)


@pytest.mark.parametrize("teacher", ["sd-tiny", "sdxl-tiny"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_method_trains_on_an_sd_format_teacher_through_the_one_loop(world, tmp_path, teacher, case):
    out = _run(world, teacher, case, tmp_path / "run")
    assert out["status"] == "completed" and out["step"] == ITERATIONS
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == ITERATIONS
    assert all(torch.isfinite(torch.tensor(v)) for row in rows for v in row.values())

    # The student moved away from the teacher's UNet, the teacher did not move, and only UNet weights are saved (the
    # text encoders are not part of a student).
    sd = load_text_to_image_teacher(teacher, world["data_dir"])
    student = load_file(tmp_path / "run" / "model.safetensors")
    teacher_state = sd.denoiser.state_dict()
    assert set(student) == set(teacher_state)
    assert all(k.startswith("net.unet.") for k in student)
    assert any(not torch.equal(student[k], teacher_state[k]) for k in student)
    spec = json.loads((tmp_path / "run" / "student.json").read_text())
    assert spec["teacher_hash"] == parameter_hash(sd.denoiser)
    assert set(spec["inputs"]) == {CASES[case][3]}

    # Previews: fixed prompts at fixed seeds, decoded through the VAE to images at the teacher's resolution.
    preview = Image.open(sorted((tmp_path / "run" / "previews").iterdir())[-1])
    assert preview.size[0] >= sd.resolution * 2 and preview.mode == "RGB"
    # One row per prompt (its text above its seeds; core.images.prompt_grid_image), not one strip of eight.
    assert preview.size[1] > PREVIEW_PROMPTS * sd.resolution * 4


def test_the_guided_teacher_is_one_batched_call_worth_two_nfe(world):
    sd = load_text_to_image_teacher("sdxl-tiny", world["data_dir"])
    cond = sd.encoder.encode(["a blue square", "the dog"])
    z = torch.randn((2, *sd.latent_shape), generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.6, dtype=torch.float64)
    w = 1.75
    guided = CFGDenoiser(sd.denoiser, w)
    with torch.no_grad():
        x_c, x_u = sd.denoiser(z, t, cond), sd.denoiser(z, t, sd.denoiser.null_cond(2))
        expected = x_u + w * (x_c - x_u)
        # Same float32 operations batched differently: rounding of ~1e-6 on outputs of order 10.
        torch.testing.assert_close(guided(z, t, cond), expected, rtol=0, atol=1e-4)
    assert nfe_per_call(guided, conditional=True) == 2 and nfe_per_call(sd.denoiser, conditional=True) == 1
    # The null condition is SDXL's zeros (force_zeros_for_empty_prompt), computed once and shared by every copy.
    assert sd.denoiser.null_cond(1).embeds.abs().max().item() == 0.0


def test_real_images_are_encoded_once_into_the_latent_cache(world, tmp_path):
    sd = load_text_to_image_teacher("sd-tiny", world["data_dir"])
    dataset = read_image_folder(world["data"], resolution=sd.resolution)
    cache = world["data_dir"] / "cache" / "latents" / f"{cache_key(dataset, sd.vae, sd.resolution, sd.scaling_factor)}.safetensors"
    _run(world, "sd-tiny", "mmd", tmp_path / "a", iterations=1)
    made, files = cache.stat().st_mtime_ns, sorted(cache.parent.iterdir())
    _run(world, "sd-tiny", "dmd2-4step-gan", tmp_path / "b", iterations=1)  # same folder and VAE: read, not re-encoded
    assert cache.stat().st_mtime_ns == made and sorted(cache.parent.iterdir()) == files

    latents = load_file(cache)["latents"]
    expected = encode_images(dataset, sd.vae, sd.resolution, sd.scaling_factor)
    assert latents.shape == (5, *sd.latent_shape)
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    # The posterior mean times scaling_factor, as diffusers' pipelines scale latents.
    image = torch.from_numpy(np.asarray(Image.open(world["data"] / "img-0.png"), dtype=np.float32))
    with torch.no_grad():
        mean = sd.vae.encode(image.permute(2, 0, 1)[None] / 127.5 - 1.0).latent_dist.mean
    torch.testing.assert_close(latents[:1], mean * sd.scaling_factor, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["dmd2-4step-gan"])  # image rows, the GAN and backward simulation: the most state
def test_an_interrupted_text_to_image_run_resumes_bit_for_bit(world, tmp_path, case):
    whole = _run(world, "sd-tiny", case, tmp_path / "whole", iterations=4, checkpoint_every=2)
    stops = iter([False, True])  # stop after step 2 (a checkpoint is written there), then resume to 4
    half = _run(world, "sd-tiny", case, tmp_path / "split", iterations=4, checkpoint_every=2,
                should_stop=lambda: next(stops, False))
    assert (half["status"], half["step"]) == ("stopped", 2)
    resumed = _run(world, "sd-tiny", case, tmp_path / "split", iterations=4, checkpoint_every=2)
    assert (whole["status"], resumed["status"]) == ("completed", "completed")
    a, b = load_file(Path(whole["model"])), load_file(Path(resumed["model"]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_previews_draw_the_first_prompts_each_at_two_seeds(world):
    from core.catalogue import get_teacher_info
    from core.text_inputs import check_text_inputs

    info = get_teacher_info("sd-tiny", world["data_dir"])
    inputs = check_text_inputs(info, False, "emd", world["prompts"], None)
    prompts = inputs.preview_prompts()
    assert len(prompts) == PREVIEW_PROMPTS * PREVIEW_SEEDS
    assert prompts[:4] == ["a red circle on the left"] * 2 + ["a blue square"] * 2
    assert prompts[6:] == ["a red circle on the left"] * 2  # three prompts, cycled


def test_a_second_stage_starts_from_the_first_stages_networks(world, tmp_path):
    """DMD2's SD 1.5 recipe: a data-free stage without the GAN, then the GAN stage from its latest checkpoint."""
    from core.checkpoints import list_checkpoints, load_state
    from workers.local import _apply_init

    first = distill("sd-tiny", "dmd2", tmp_path / "first", preset="sd15", sets=("guidance=2",), iterations=2,
                    batch_size=2, data_dir=world["data_dir"], prompts=world["prompts"])
    second = distill("sd-tiny", "dmd2", tmp_path / "second", preset="sd15-gan", iterations=1, batch_size=2,
                     data_dir=world["data_dir"], data=world["data"], init=tmp_path / "first")
    assert (first["status"], second["status"]) == ("completed", "completed")
    spec = json.loads((tmp_path / "second" / "student.json").read_text())
    assert spec["init"] == {"from": str(tmp_path / "first"), "step": 2, "nets": ["student", "fake"]}  # the head is new

    # What _apply_init loads is the first stage's last training state, network by network.
    from core.method_specs import build_method_config
    from core.methods import build_method

    sd = load_text_to_image_teacher("sd-tiny", world["data_dir"])
    task = build_method(sd.denoiser, build_method_config("dmd2", preset="sd15-gan"), total_steps=1)
    head = {k: v.clone() for k, v in task.nets["head"].state_dict().items()}
    _apply_init(task, *list_checkpoints(tmp_path / "first" / "checkpoints")[-1][::-1])
    saved = load_state(list_checkpoints(tmp_path / "first" / "checkpoints")[-1][1])[0]["task"]["nets"]
    for name in ("student", "fake"):
        assert all(torch.equal(v, saved[name][k]) for k, v in task.nets[name].state_dict().items())
    assert all(torch.equal(v, head[k]) for k, v in task.nets["head"].state_dict().items())


def test_init_must_be_a_run_of_the_same_teacher_and_method_with_a_checkpoint(world, tmp_path):
    distill("sd-tiny", "emd", tmp_path / "emd", iterations=1, batch_size=2, data_dir=world["data_dir"],
            prompts=world["prompts"])
    run = dict(iterations=1, batch_size=2, data_dir=world["data_dir"], prompts=world["prompts"], preset="sd15")
    with pytest.raises(ValueError, match=rf"^init: {tmp_path / 'emd'} distilled 'sd-tiny' with 'emd'; a run starts only "
                                         r"from one of the same teacher and method \('sd-tiny', 'dmd2'\)$"):
        distill("sd-tiny", "dmd2", tmp_path / "x", init=tmp_path / "emd", **run)
    with pytest.raises(ValueError, match=rf"^init: {tmp_path} is not a distill run folder \(no student.json\)$"):
        distill("sd-tiny", "dmd2", tmp_path / "x", init=tmp_path, **run)
    for old in (tmp_path / "emd" / "checkpoints").iterdir():
        old.unlink()
    with pytest.raises(ValueError, match=r"^init: \S+ has no training checkpoint to start from$"):
        distill("sd-tiny", "emd", tmp_path / "x", init=tmp_path / "emd", **{**run, "preset": "default"})
    assert not (tmp_path / "x").exists()
