"""Import checks for Stable Diffusion 1.x/2.x and SDXL pipeline folders (diffusers layout, safetensors only).

Every part is checked from its config first (cheap, and the message can name the part), then loaded from local files
only; the empty prompt and one test prompt are encoded and the UNet takes one denoising step at the model's own
latent size. Every refusal starts with the part it concerns ("unet: ...", "tokenizer: ...").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from core.teachers.imported import TeacherImportError, _first_line, _read_json, ddpm_alphas_cumprod
from core.teachers.sd_teacher import PromptEncoder, TextUNetCall, prompt_encoder
from core.text_cond import TextCond

SD_PIPELINES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
# part -> the class model_index.json must list for it (None: any class; the scheduler is read from its config)
PARTS = {
    "sd": {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
           "tokenizer": TOKENIZER_CLASSES, "scheduler": None},
    "sdxl": {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
             "text_encoder_2": "CLIPTextModelWithProjection", "tokenizer": TOKENIZER_CLASSES,
             "tokenizer_2": TOKENIZER_CLASSES, "scheduler": None},
}
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
PICKLED = (".bin", ".ckpt", ".pt", ".pth")
SD_PREDICTION_TYPES = ("epsilon", "v_prediction")
TEST_PROMPTS = ("", "a photograph of a cat")  # the empty prompt is the future null condition
NUM_TIME_IDS = 6  # SDXL: original size (2), crop top-left (2), target size (2)


def _config(folder: Path, part: str) -> dict:
    return _read_json(folder / part / "config.json", f"{part}: config.json")


def _check_listed(folder: Path, index: dict, kind: str) -> None:
    """Each part folder exists and model_index.json lists the class the studio can load for it."""
    for part, expected in PARTS[kind].items():
        if not (folder / part).is_dir():
            raise TeacherImportError(f"{part}: folder {part}/ is missing in {folder}")
        entry = index.get(part)
        listed = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        allowed = (expected,) if isinstance(expected, str) else expected
        if listed is None or (allowed and listed not in allowed):
            raise TeacherImportError(f"{part}: model_index.json lists {listed!r} (supported: {', '.join(allowed or ['any'])})")


def _check_weights(folder: Path, kind: str) -> None:
    for part in (p for p in WEIGHTED if p in PARTS[kind]):
        files = [p.name for p in (folder / part).iterdir() if p.is_file()]
        if any(f.endswith(".safetensors") for f in files):
            continue
        pickled = sorted(f for f in files if f.endswith(PICKLED))
        if pickled:
            raise TeacherImportError(f"{part}: only pickled weights ({', '.join(pickled)}); re-save the pipeline with "
                                     "safe_serialization=True (pickled weights are refused)")
        raise TeacherImportError(f"{part}: no safetensors weights in {part}/")


def _check_tokenizers(folder: Path, kind: str) -> None:
    """A CLIP tokenizer loads from tokenizer.json alone or from vocab.json + merges.txt."""
    for part in (p for p in ("tokenizer", "tokenizer_2") if p in PARTS[kind]):
        if (folder / part / "tokenizer.json").is_file():
            continue
        for name in ("vocab.json", "merges.txt"):
            if not (folder / part / name).is_file():
                raise TeacherImportError(f"{part}: {name} is missing in {part}/ (and there is no tokenizer.json)")


def _cross_attention_dim(unet_cfg: dict) -> int:
    dim = unet_cfg.get("cross_attention_dim")
    dims = set(dim) if isinstance(dim, (list, tuple)) else {dim}
    if len(dims) != 1 or not isinstance(next(iter(dims)), int):
        raise TeacherImportError(f"unet: cross_attention_dim {dim!r} must be one integer shared by every block")
    return dims.pop()


def _check_unet(unet_cfg: dict, vae_cfg: dict) -> None:
    if unet_cfg.get("_class_name") != "UNet2DConditionModel":
        raise TeacherImportError(f"unet: unsupported model class {unet_cfg.get('_class_name')!r} in unet/config.json "
                                 "(expected UNet2DConditionModel)")
    cin, cout, latent = unet_cfg.get("in_channels"), unet_cfg.get("out_channels"), vae_cfg.get("latent_channels")
    if cin == 9:
        raise TeacherImportError("unet: in_channels 9 is an inpainting UNet (latents + mask + masked image); "
                                 "only text-to-image UNets are supported")
    if cin != latent or cout != latent:
        raise TeacherImportError(f"unet: in_channels {cin} / out_channels {cout} must equal the vae's latent_channels "
                                 f"{latent}")
    if not isinstance(unet_cfg.get("sample_size"), int):
        raise TeacherImportError(f"unet: sample_size {unet_cfg.get('sample_size')!r} must be one integer")


def _check_text_sizes(unet_cfg: dict, encoders: dict[str, dict], kind: str) -> None:
    cross = _cross_attention_dim(unet_cfg)
    sizes = [cfg.get("hidden_size") for cfg in encoders.values()]
    if kind == "sd" and cross != sizes[0]:
        raise TeacherImportError(f"unet: cross_attention_dim {cross} does not match the text encoder's hidden size {sizes[0]}")
    if kind == "sdxl" and cross != sum(sizes):
        raise TeacherImportError(f"unet: cross_attention_dim {cross} does not match the text encoders' hidden sizes "
                                 f"{sizes[0]} + {sizes[1]} = {sum(sizes)}")
    if kind == "sdxl":
        _check_added_embeddings(unet_cfg, encoders["text_encoder_2"])


def _check_added_embeddings(unet_cfg: dict, enc2_cfg: dict) -> None:
    """SDXL's added embedding reads the pooled prompt (text_encoder_2's projection) plus six embedded time ids."""
    if unet_cfg.get("addition_embed_type") != "text_time":
        raise TeacherImportError(f"unet: addition_embed_type {unet_cfg.get('addition_embed_type')!r} must be 'text_time' "
                                 "for an SDXL pipeline")
    time_dim, got = unet_cfg.get("addition_time_embed_dim"), unet_cfg.get("projection_class_embeddings_input_dim")
    pooled = enc2_cfg.get("projection_dim")
    if not isinstance(time_dim, int) or not isinstance(pooled, int) or got != NUM_TIME_IDS * time_dim + pooled:
        raise TeacherImportError(f"unet: projection_class_embeddings_input_dim {got} does not match {NUM_TIME_IDS} time ids "
                                 f"x addition_time_embed_dim {time_dim} + text_encoder_2's projection_dim {pooled}")


def _check_configs(folder: Path, kind: str) -> dict:
    """Config-level consistency; returns the configs read."""
    cfgs = {part: _config(folder, part) for part in ("unet", "vae", "text_encoder", "text_encoder_2")
            if part in PARTS[kind]}
    _check_unet(cfgs["unet"], cfgs["vae"])
    _check_text_sizes(cfgs["unet"], {p: c for p, c in cfgs.items() if p.startswith("text_encoder")}, kind)
    sched = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler: scheduler_config.json")
    prediction_type = sched.get("prediction_type", "epsilon")
    if prediction_type not in SD_PREDICTION_TYPES:
        raise TeacherImportError(f"scheduler: unsupported prediction_type {prediction_type!r} "
                                 f"(supported: {', '.join(SD_PREDICTION_TYPES)})")
    cfgs["scheduler"] = sched
    return cfgs


def _load(part: str, loader):
    try:
        return loader().eval()
    except Exception as exc:  # diffusers and transformers raise many types for corrupt or truncated files
        raise TeacherImportError(f"{part}: cannot load it ({_first_line(exc)})") from None


def _load_models(folder: Path, kind: str) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def diffusers_part(cls, part):
        return lambda: cls.from_pretrained(folder / part, local_files_only=True, use_safetensors=True,
                                           low_cpu_mem_usage=False)

    def transformers_part(cls, part):
        return lambda: cls.from_pretrained(folder / part, local_files_only=True, use_safetensors=True)

    models = {"unet": _load("unet", diffusers_part(UNet2DConditionModel, "unet")),
              "vae": _load("vae", diffusers_part(AutoencoderKL, "vae")),
              "text_encoder": _load("text_encoder", transformers_part(CLIPTextModel, "text_encoder"))}
    if kind == "sdxl":
        models["text_encoder_2"] = _load("text_encoder_2", transformers_part(CLIPTextModelWithProjection, "text_encoder_2"))
    return models


def _load_tokenizers(folder: Path, kind: str) -> dict:
    from transformers import CLIPTokenizer

    parts = ("tokenizer", "tokenizer_2") if kind == "sdxl" else ("tokenizer",)
    found = {}
    for part in parts:
        try:
            found[part] = CLIPTokenizer.from_pretrained(folder / part, local_files_only=True)
        except Exception as exc:  # a broken vocabulary surfaces as many exception types
            raise TeacherImportError(f"{part}: cannot load it ({_first_line(exc)})") from None
    return found


def _check_token_ids(tokenizers: dict, models: dict, kind: str) -> None:
    """The tokenizers' ids and lengths fit their text encoders (a mismatched pair fails inside the encoder otherwise)."""
    pairs = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))[:2 if kind == "sdxl" else 1]
    for part, enc in pairs:
        config = models[enc].config
        ids = PromptEncoder._tokens(tokenizers[part], list(TEST_PROMPTS)).input_ids
        if int(ids.max()) >= config.vocab_size or ids.shape[1] > config.max_position_embeddings:
            raise TeacherImportError(f"{part}: token ids up to {int(ids.max())} or length {ids.shape[1]} do not fit the "
                                     f"text encoder (vocab_size {config.vocab_size}, max_position_embeddings "
                                     f"{config.max_position_embeddings})")


def _check_finite(part: str, x: torch.Tensor, shape: tuple | None = None) -> None:
    if (shape is not None and tuple(x.shape) != shape) or not bool(torch.isfinite(x).all()):
        raise TeacherImportError(f"{part}: a test pass gave shape {tuple(x.shape)}"
                                 + (f" (expected {shape})" if shape else "") + " or non-finite values")


def _denoise_once(unet, cond: TextCond, latent_shape, timestep: int) -> None:
    latents = torch.randn((len(cond), *latent_shape), generator=torch.Generator().manual_seed(0))
    try:
        out = TextUNetCall(unet)(latents, torch.full((len(cond),), timestep), cond)
    except Exception as exc:  # shape mismatches surface as RuntimeError, ValueError or IndexError
        raise TeacherImportError(f"unet: one denoising step failed ({_first_line(exc)})") from None
    _check_finite("unet", out, tuple(latents.shape))


def _parameters(models: dict) -> dict[str, int]:
    return {part: sum(p.numel() for p in m.parameters()) for part, m in models.items()}


def inspect_sd(folder: Path, cls: str) -> dict:
    """Check an SD or SDXL folder end to end; returns its manifest fields."""
    kind = SD_PIPELINES[cls]
    index = _read_json(folder / "model_index.json", "model_index: model_index.json")
    _check_listed(folder, index, kind)
    _check_weights(folder, kind)
    _check_tokenizers(folder, kind)
    cfgs = _check_configs(folder, kind)
    acp = ddpm_alphas_cumprod(cfgs["scheduler"], "scheduler: scheduler_config.json")
    models = _load_models(folder, kind)
    tokenizers = _load_tokenizers(folder, kind)
    unet, vae = models["unet"].config, models["vae"].config
    scale = 2 ** (len(vae.block_out_channels) - 1)
    latent_shape = (unet.in_channels, unet.sample_size, unet.sample_size)
    _check_token_ids(tokenizers, models, kind)
    with torch.no_grad():
        cond = prompt_encoder(kind, models, tokenizers, unet.sample_size * scale).encode(list(TEST_PROMPTS))
        _check_finite("text_encoder", cond.embeds)
        if cond.pooled is not None:
            _check_finite("text_encoder_2", cond.pooled)
        _denoise_once(models["unet"], cond, latent_shape, acp.numel() // 2)
    hidden = [models[p].config.hidden_size for p in ("text_encoder", "text_encoder_2") if p in models]
    fields = {"kind": kind, "pipeline_class": cls, "data_shape": list(latent_shape), "latent_shape": list(latent_shape),
              "resolution": unet.sample_size * scale, "vae_scale_factor": scale, "num_classes": 0,
              "prediction_type": cfgs["scheduler"].get("prediction_type", "epsilon"),
              "num_train_timesteps": int(acp.numel()), "scaling_factor": float(vae.scaling_factor),
              "text_hidden_sizes": hidden, "parameters": _parameters(models)}
    if cond.pooled is not None:
        fields["pooled_size"] = int(cond.pooled.shape[-1])
    return fields


def copy_sd_parts(src: Path, dest: Path, kind: str) -> None:
    """Copy the checked parts (pickled files left behind) and a model_index.json that lists only them, so the copy
    loads as the same pipeline class."""
    for part in PARTS[kind]:
        shutil.copytree(src / part, dest / part, ignore=shutil.ignore_patterns(*(f"*{ext}" for ext in PICKLED)))
    index = json.loads((src / "model_index.json").read_text())
    for key, value in index.items():
        if not key.startswith("_") and isinstance(value, list) and key not in PARTS[kind]:
            index[key] = [None, None]
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
