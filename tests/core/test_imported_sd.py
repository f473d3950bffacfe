"""Imported Stable Diffusion and SDXL pipelines: tiny random folders (built from configs, nothing downloaded) are
checked end to end and registered with their resolution, latent shape and prediction type; anything else is refused
naming the part, with nothing registered; until the methods take prompts, distilling them is refused, and sampling
or evaluating without prompts is refused naming the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.catalogue import MANIFEST, check_distillable, distillable_teachers, get_teacher_info, imported_dir, list_teachers
from core.specs import SampleRequest
from core.teachers import load_teacher
from core.teachers.imported import TeacherImportError, import_folder
from tests.tiny_pipelines import save_tiny_sd

REFUSAL = r"prompts: 'sd-tiny' is a text-to-image teacher; give one or more prompts"
PROMPT_REFUSAL = r"prompt: 'sd-tiny' is a text-to-image teacher; give --prompt TEXT or --prompts FILE"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    return {"sd": save_tiny_sd(root / "sd"), "sd-v": save_tiny_sd(root / "sd-v", "v_prediction"),
            "sdxl": save_tiny_sd(root / "sdxl", xl=True)}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def _copy(pipelines, key: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pipelines[key], tmp_path / "src"))


def _entries(data_dir: Path) -> list[str]:
    root = imported_dir(data_dir)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# -- Accepted folders ------------------------------------------------------------------------------------------

EXPECTED = {
    "sd": ("sd", "StableDiffusionPipeline", "epsilon", [32], ("unet", "vae", "text_encoder")),
    "sd-v": ("sd", "StableDiffusionPipeline", "v_prediction", [32], ("unet", "vae", "text_encoder")),
    "sdxl": ("sdxl", "StableDiffusionXLPipeline", "epsilon", [32, 32], ("unet", "vae", "text_encoder", "text_encoder_2")),
}


@pytest.mark.parametrize("key", list(EXPECTED))
def test_sd_folders_are_registered_with_their_manifest(pipelines, tmp_path, data_dir, key):
    from diffusers import DiffusionPipeline

    kind, cls, prediction_type, hidden, weighted = EXPECTED[key]
    src = _copy(pipelines, key, tmp_path)
    (src / "unet" / "stale.bin").write_bytes(b"pickled leftovers beside the safetensors")
    manifest = import_folder(src, "sd-tiny", data_dir)

    dest = imported_dir(data_dir) / "sd-tiny"
    assert _entries(data_dir) == ["sd-tiny"]
    assert json.loads((dest / MANIFEST).read_text()) == json.loads(json.dumps(manifest))
    assert (manifest["kind"], manifest["pipeline_class"], manifest["prediction_type"]) == (kind, cls, prediction_type)
    assert (manifest["resolution"], manifest["latent_shape"], manifest["data_shape"]) == (64, [4, 32, 32], [4, 32, 32])
    assert (manifest["num_train_timesteps"], manifest["scaling_factor"], manifest["num_classes"]) == (1000, 0.18215, 0)
    assert manifest["text_hidden_sizes"] == hidden
    assert manifest.get("pooled_size") == (32 if kind == "sdxl" else None)
    assert tuple(manifest["parameters"]) == weighted and all(n > 0 for n in manifest["parameters"].values())

    # The copy is self-contained (the source can go), leaves pickles behind and loads as the same pipeline class.
    shutil.rmtree(src)
    assert not (dest / "unet" / "stale.bin").exists()
    pipe = DiffusionPipeline.from_pretrained(dest, local_files_only=True)
    assert type(pipe).__name__ == cls
    assert sum(p.numel() for p in pipe.unet.parameters()) == manifest["parameters"]["unet"]

    info = get_teacher_info("sd-tiny", data_dir)
    assert (info.kind, info.data_shape, info.resolution, info.prediction_type, info.builtin) == \
        (kind, (4, 32, 32), 64, prediction_type, False)
    assert info.is_text_to_image and cls in info.description


# -- Refusals: the part named first, nothing registered --------------------------------------------------------

def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _set(rel: str, **changes):
    def edit(src: Path) -> Path:
        _edit_json(src / rel, **changes)
        return src
    return edit


def _delete(*rels: str):
    def edit(src: Path) -> Path:
        for rel in rels:
            path = src / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return src
    return edit


def _rebuild(**kwargs):
    def edit(src: Path) -> Path:
        shutil.rmtree(src)
        return save_tiny_sd(src, **kwargs)
    return edit


def _junk(rel: str):
    def edit(src: Path) -> Path:
        (src / rel).write_bytes(b"junk")
        return src
    return edit


def _pickle_one_part(src: Path) -> Path:
    (src / "text_encoder" / "model.safetensors").unlink()
    (src / "text_encoder" / "pytorch_model.bin").write_bytes(b"a pickle")
    return src


REFUSALS = {
    "inpainting unet": ("sd", _rebuild(unet_overrides={"in_channels": 9}), r"^unet: in_channels 9 is an inpainting UNet"),
    "inpainting class": ("sd", _set("model_index.json", _class_name="StableDiffusionInpaintPipeline"),
                         r"^model_index: unsupported pipeline class 'StableDiffusionInpaintPipeline'"),
    "upscale class": ("sd", _set("model_index.json", _class_name="StableDiffusionUpscalePipeline"),
                      r"^model_index: unsupported pipeline class 'StableDiffusionUpscalePipeline'"),
    "unknown class": ("sdxl", _set("model_index.json", _class_name="MadeUpPipeline"),
                      r"^model_index: unsupported pipeline class 'MadeUpPipeline'"),
    "no vocab": ("sd", _delete("tokenizer/vocab.json", "tokenizer/tokenizer.json"),
                 r"^tokenizer: vocab.json is missing in tokenizer/"),
    "no merges (sdxl)": ("sdxl", _delete("tokenizer_2/merges.txt", "tokenizer_2/tokenizer.json"),
                         r"^tokenizer_2: merges.txt is missing in tokenizer_2/"),
    "no vae folder": ("sd", _delete("vae"), r"^vae: folder vae/ is missing"),
    "no text_encoder_2 folder": ("sdxl", _delete("text_encoder_2"), r"^text_encoder_2: folder text_encoder_2/ is missing"),
    "cross-attention (sd)": ("sd", _set("unet/config.json", cross_attention_dim=64),
                             r"^unet: cross_attention_dim 64 does not match the text encoder's hidden size 32$"),
    "cross-attention (sdxl)": ("sdxl", _set("unet/config.json", cross_attention_dim=32),
                               r"^unet: cross_attention_dim 32 does not match the text encoders' hidden sizes 32 \+ 32 = 64"),
    "added embedding (sdxl)": ("sdxl", _set("text_encoder_2/config.json", projection_dim=40),
                               r"^unet: projection_class_embeddings_input_dim 80 does not match 6 time ids"),
    "time embedding (sdxl)": ("sdxl", _set("unet/config.json", addition_time_embed_dim=16),
                              r"^unet: projection_class_embeddings_input_dim 80 does not match .*addition_time_embed_dim 16"),
    "pickled weights": ("sd", _rebuild(safe_serialization=False), r"^unet: only pickled weights"),
    "one pickled part": ("sdxl", _pickle_one_part, r"^text_encoder: only pickled weights \(pytorch_model.bin\)"),
    "sample prediction": ("sd", _set("scheduler/scheduler_config.json", prediction_type="sample"),
                          r"^scheduler: unsupported prediction_type 'sample'"),
    "corrupt vae": ("sd", _junk("vae/diffusion_pytorch_model.safetensors"), r"^vae: cannot load it"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_sd_folders_are_refused_naming_the_part(pipelines, tmp_path, data_dir, case):
    key, edit, message = REFUSALS[case]
    src = edit(_copy(pipelines, key, tmp_path))
    with pytest.raises(TeacherImportError, match=message):
        import_folder(src, "sd-tiny", data_dir)
    assert _entries(data_dir) == []
    assert [i.name for i in list_teachers(data_dir) if not i.builtin] == []


def test_a_null_class_is_refused_for_a_prompt_conditioned_pipeline(pipelines, data_dir):
    with pytest.raises(TeacherImportError, match=r"^null_class: StableDiffusionPipeline folders are prompt-conditioned"):
        import_folder(pipelines["sd"], "sd-tiny", data_dir, null_class=0)
    assert _entries(data_dir) == []


# -- Distilled with prompts or data; not sampled by a queued job; no sample or evaluation without prompts -------

def test_sd_teacher_is_distillable_but_promptless_runs_and_queued_samples_refuse_it(pipelines, data_dir, tmp_path):
    from workers.local import distill, sample_model
    from workers.submit import validate_spec

    import_folder(pipelines["sd"], "sd-tiny", data_dir)
    assert "sd-tiny" in [i.name for i in distillable_teachers(data_dir)]
    assert check_distillable("sd-tiny", data_dir).is_text_to_image
    assert load_teacher("sd-tiny", data_dir).takes_prompts
    with pytest.raises(ValueError, match=f"^{PROMPT_REFUSAL}$"):
        sample_model(SampleRequest(model="teacher:sd-tiny", seeds=(0,), steps=2), tmp_path / "out", data_dir=data_dir)
    no_inputs = r"^prompts: 'sd-tiny' is a text-to-image teacher; give --prompts FILE \(one prompt per line\) or --data"
    with pytest.raises(ValueError, match=no_inputs):
        distill("sd-tiny", "emd", tmp_path / "run", iterations=1, data_dir=data_dir)
    with pytest.raises(ValueError, match=no_inputs):
        validate_spec("distill", {"teacher": "sd-tiny", "method": "emd"}, data_dir=data_dir)
    with pytest.raises(ValueError, match=f"^{REFUSAL}$"):
        validate_spec("sample", {"model": "teacher:sd-tiny", "seeds": [0]}, data_dir=data_dir)
    with pytest.raises(ValueError, match=r"^prompts: teacher:sd-tiny is a text-to-image model of 'sd-tiny', which "
                                         r"has no default prompt set; give a built-in set \(shapes-test, shapes-heldout\) "
                                         r"or a prompt file$"):
        validate_spec("evaluate", {"models": ["teacher:sd-tiny"], "metrics": ["speed"]}, data_dir=data_dir)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()
