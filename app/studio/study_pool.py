"""Building a study's pool (docs/study.md#pair-design): the images every variant needs, drawn by sample jobs, then blind
pairs. Every variant is paired with every other on the same (condition, seed); gold pairs use seeds reserved for them
(so they never break the exposure rule) and look like normal pairs."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from app.studio.compare import Variant, job_progress, matching_sample_run
from app.studio.context import Studio
from core.catalogue import get_teacher_info
from core.refs import parse_ref
from storage import repo, studies
from storage.artifacts import resolve
from storage.db import session_scope
from storage.models import StudyVariant

GOLD_KINDS = ("broken", "wrong_class", "identical")


@dataclass(frozen=True)
class Plan:
    """What the pool is drawn from: conditions (class ids, or None for an unconditional teacher) x seeds, plus the
    teacher's gold seeds after them."""

    classes: tuple[int | None, ...]
    seeds: tuple[int, ...]
    gold_seeds: tuple[int, ...]
    pairs_per_model_pair: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Plan:
        n_variants = len(config["variants"])
        n_normal = config["pairs_per_model_pair"] * n_variants * (n_variants - 1) // 2
        n_gold = round(n_normal * config["gold_rate"] / max(1e-9, 1 - config["gold_rate"]))
        top = max(config["seeds"])
        per_class = -(-n_gold // max(1, len(config["classes"])))
        return cls(tuple(config["classes"]), tuple(config["seeds"]), tuple(range(top + 1, top + 1 + per_class)),
                   config["pairs_per_model_pair"])


def condition_text(teacher: str, class_id: int | None, data_dir: Path, config: dict | None = None) -> str:
    """What the rater reads above the pair: the prompt, the class, or nothing; never a model name."""
    prompts = (config or {}).get("prompts")
    if prompts:
        return f"the prompt: “{prompts[class_id]}”"
    if class_id is None:
        return "no prompt: judge the images alone"
    return f"the digit {class_id}" if get_teacher_info(teacher, data_dir).benchmark == "digits" else f"class {class_id}"


def condition(config: dict, c: int | None) -> tuple[int | None, str]:
    """(class id, prompt) of a study condition: a text-to-image study's conditions index its prompts."""
    prompts = config.get("prompts")
    return (None, prompts[c]) if prompts else (c, "")


def _row(variant: StudyVariant, config: dict) -> Variant:
    """The Compare tab's row for a variant: students are always sampled at their recorded checkpoint step; the teacher
    at the study's guidance."""
    is_teacher = parse_ref(variant.model).is_teacher
    return Variant(variant.model, variant.steps, variant.checkpoint, is_teacher, variant.label,
                   config.get("guidance", 1.0) if is_teacher else 1.0)


def _spec(variant: StudyVariant, config: dict, c: int | None, seeds: list[int]) -> dict[str, Any]:
    class_id, prompt = condition(config, c)
    return _row(variant, config).sample_spec(seeds, class_id, [prompt] if prompt else ())


def needs(ctx: Studio, study_id: int) -> dict[str, Any]:
    """{missing: [(variant, class, seeds)], pending: [run ids], failed: [...]} for the images the pool draws on."""
    with session_scope(ctx.factory) as session:
        study = studies.get_study(session=session, study_id=study_id)
        variants = studies.study_variants(session=session, study_id=study_id)
        config = dict(study.config)
        plan = Plan.from_config(config)
        wanted = []
        for v in variants:
            for c in plan.classes:
                seeds = list(plan.seeds) + (list(plan.gold_seeds) if v.is_teacher else [])
                class_id, prompt = condition(config, c)
                found = repo.find_images(session=session, model=_row(v, config).key, steps=v.steps,
                                         checkpoint=v.checkpoint, class_id=class_id, seeds=seeds, prompt=prompt)
                absent = [s for s in seeds if s not in found or not resolve(ctx.data_dir, found[s].path).is_file()]
                if absent:
                    wanted.append((v, c, absent))
    missing, pending, failed = [], [], []
    with session_scope(ctx.factory) as session:
        for v, c, absent in wanted:
            spec = _spec(v, config, c, absent)
            run = matching_sample_run(session, spec, statuses=("queued", "running", "failed", "cancelled"))
            if run is not None and run.status in ("queued", "running"):
                pending.append(run.id)
            else:
                missing.append((v.id, c, absent))
                if run is not None:
                    failed.append(f"{v.label} class {c}: sample run {run.id} {run.status}: {run.error or ''}")
    return {"missing": missing, "pending": pending, "failed": failed}


def request_images(ctx: Studio, user: str, study_id: int) -> list[int]:
    """Queue a sample job per (variant, class) with missing images; the run ids."""
    got, ids = needs(ctx, study_id), []
    with session_scope(ctx.factory) as session:
        by_id = {v.id: v for v in studies.study_variants(session=session, study_id=study_id)}
        config = dict(studies.get_study(session=session, study_id=study_id).config)
    for variant_id, c, seeds in got["missing"]:
        ctx.throttle(user)
        ids.append(ctx.jobs.submit("sample", _spec(by_id[variant_id], config, c, seeds)))
    return ids


def status_text(ctx: Studio, study_id: int) -> tuple[str, bool]:
    """(a line on the images' state, whether the pool can be built now)."""
    got = needs(ctx, study_id)
    if got["pending"]:
        return f"drawing images: {job_progress(ctx, got['pending'])}", False
    if got["missing"]:
        extra = f" Last attempt: {'; '.join(got['failed'])}" if got["failed"] else ""
        return f"{len(got['missing'])} image sets missing; press Generate images.{extra}", False
    return "all images ready: build the pool to open the study", True


def corrupt(src: Path, dst: Path, seed: int) -> None:
    """A visibly broken copy for gold pairs: blur, block artefacts and noise."""
    image = Image.open(src).convert("RGB")
    w, h = image.size
    blurred = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / 12)))
    blocky = blurred.resize((max(1, w // 4), max(1, h // 4)), Image.NEAREST).resize((w, h), Image.NEAREST)
    pixels = np.asarray(blocky, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 60, pixels.shape)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(dst, format="PNG")


def build_pool(ctx: Studio, study_id: int, seed: int = 0) -> dict[str, int]:
    """Write the blind pairs and open the study; ValueError if images are missing or it is not a draft."""
    from app.rate.blind import blind_copy

    got = needs(ctx, study_id)
    if got["missing"] or got["pending"]:
        raise ValueError("study: its images are not all drawn yet; generate them first")
    rng = random.Random(seed)
    with session_scope(ctx.factory) as session:
        study = studies.get_study(session=session, study_id=study_id)
        if study.status != "draft":
            raise ValueError(f"study: {study.name!r} is {study.status}; only a draft gets a pool")
        plan = Plan.from_config(study.config)
        variants = studies.study_variants(session=session, study_id=study_id)
        teacher = next(v for v in variants if v.is_teacher)

        config = dict(study.config)

        def image(v: StudyVariant, c: int | None, s: int) -> Path:
            class_id, prompt = condition(config, c)
            found = repo.find_images(session=session, model=_row(v, config).key, steps=v.steps,
                                     checkpoint=v.checkpoint, class_id=class_id, seeds=[s], prompt=prompt)
            return resolve(ctx.data_dir, found[s].path)

        def blind(path: Path) -> str:
            return blind_copy(path, ctx.data_dir)

        cells = list(itertools.product(plan.classes, plan.seeds))
        normal = 0
        for a, b in itertools.combinations(variants, 2):
            for c, s in rng.sample(cells, min(plan.pairs_per_model_pair, len(cells))):
                studies.add_pair(session=session, study_id=study_id, kind="normal", variant_a_id=a.id, variant_b_id=b.id,
                                 image_a=blind(image(a, c, s)), image_b=blind(image(b, c, s)), condition=str(c),
                                 condition_text=condition_text(study.teacher, c, ctx.data_dir, config), seed=s)
                normal += 1
        gold = 0
        scratch = ctx.data_dir / "served" / "gold-scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        for i, (c, s) in enumerate(itertools.product(plan.classes, plan.gold_seeds)):
            kind = GOLD_KINDS[i % len(GOLD_KINDS)]
            clean = image(teacher, c, s)
            text = condition_text(study.teacher, c, ctx.data_dir, config)
            common = {"session": session, "study_id": study_id, "variant_a_id": teacher.id, "condition": f"gold-{c}",
                      "condition_text": text, "seed": s}
            if kind == "broken":
                broken = scratch / f"{rng.getrandbits(64):016x}.png"
                corrupt(clean, broken, seed=rng.getrandbits(32))
                studies.add_pair(kind="gold_broken", variant_b_id=None, image_a=blind(clean), image_b=blind(broken),
                                 gold_expected={"quality": ["a"], "alignment": ["a"]}, **common)
                broken.unlink()
            elif kind == "wrong_class" and c is not None and len(plan.classes) > 1:
                other = rng.choice([k for k in plan.classes if k != c])
                studies.add_pair(kind="gold_broken", variant_b_id=teacher.id, image_a=blind(clean),
                                 image_b=blind(image(teacher, other, s)), gold_expected={"alignment": ["a"]}, **common)
            else:
                copy = blind(clean)
                studies.add_pair(kind="gold_identical", variant_b_id=teacher.id, image_a=copy, image_b=copy,
                                 gold_expected={"quality": ["tie", "both_bad"], "alignment": ["tie", "both_bad"]}, **common)
            gold += 1
        studies.set_status(session=session, study_id=study_id, status="open")
    return {"normal": normal, "gold": gold}
