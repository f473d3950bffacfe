"""Evaluation: sample each model at fixed seeds, measure the samples against cached reference statistics,
store one Evaluation row per value. The CLI's foreground `evaluate` and the Celery job (workers/jobs.py) both call
`evaluate`.

Samples: seeds seed .. seed + n - 1 with per-seed noise (core.noise), so every model sees the same noise; a
class-conditional model draws seed s as class s % num_classes, a text-to-image model prompt s of its prompt set
(core/eval_prompts.py) and its latents are decoded by the teacher's VAE. Teachers use DDIM at their step count (with
classifier-free guidance `guidance` for class-conditional and text-to-image ones), students their own sampler,
unguided. Rows: metric, value, n, extractor, reference (the reference statistics' key, '' when no reference was used)
and reference_hash (its features' content hash), seed and seed_last (the first and last seed), steps, NFE (a guided
call counts 2), prompts (the prompt set: a built-in set's name, a file's path and hash; '' for models without
prompts) and run_id (the evaluate run; NULL in the foreground).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from core.eval_specs import PRDC_K, REFERENCE_METRICS, is_small_sample, stored_metrics
from core.noise import seeded_noise
from core.refs import ModelRef
from core.specs import SampleRequest
from storage import repo
from storage.db import session_scope
from workers.submit import EvalTarget, check_evaluate

Progress = Callable[[int, int], None]


def evaluate(refs: Sequence[str], metrics: Sequence[str] | str, n: int, seed: int = 0, *, data_dir: Path,
             device: str = "cpu", extractor: str | None = None, guidance: float = 1.0, prompts: str | None = None,
             batch_size: int = 256, progress: Progress | None = None,
             session_factory: sessionmaker[Session] | None = None, run_id: int | None = None) -> dict[str, Any]:
    """Evaluate every model in `refs` (teacher:NAME[@STEPS], run:ID[@STEPS], a student folder) on `metrics`;
    `prompts`: what text-to-image models draw (a built-in set's name or a prompt file's absolute path).

    Everything is checked before any sampling (ValueError naming the field). With a session factory each model's
    rows are stored in one transaction as soon as it is measured; with a run id as well, a model whose rows this run
    already stored is not measured again (a resumed job picks up where it stopped).
    Returns {"n", "seed", "metrics": stored names, "models": [{"model", "ref", "steps", "nfe", "dataset",
    "extractor", "reference", "reference_cached", "prompts", PROVENANCE..., "values": {metric: value},
    "seconds"}]}, where PROVENANCE is "n", "reference_hash", "seed_first", "seed_last" and "small_sample" (None when
    nothing was measured against a reference); "prompts" is the prompt set's label ('' for models without prompts).
    """
    # 1. Validate everything, the same checks as a submitted job.
    spec = {"models": list(refs), "metrics": metrics.split(",") if isinstance(metrics, str) else list(metrics), "n": n,
            "seed": seed, "extractor": extractor, "guidance": guidance, "prompts": prompts}
    if session_factory is not None:
        with session_scope(session_factory) as session:
            clean, targets = check_evaluate(spec, data_dir=data_dir, session=session)
    else:
        clean, targets = check_evaluate(spec, data_dir=data_dir, session=None)
    wanted = stored_metrics(clean["metrics"])
    seeds = tuple(range(clean["seed"], clean["seed"] + clean["n"]))
    done = _stored_by_run(session_factory, run_id)
    total = len(targets) * len(seeds)

    # 2. The feature extractors and the shapes classifier, before any sampling: a missing weights file fails now, not
    # after minutes of work.
    extractors = {}
    if any(name in wanted for name in REFERENCE_METRICS):
        from core.metrics import get_extractor

        extractors = {name: get_extractor(name, device) for name in sorted({t.extractor for t in targets if t.extractor})}
    if "alignment" in wanted:
        from core.metrics.shapes_classifier import load_classifier

        extractors["alignment"] = load_classifier(device=device)

    # 3. One model at a time: sample, measure, store.
    results = []
    for i, target in enumerate(targets):
        def step(k: int, offset: int = i * len(seeds)) -> None:
            if progress is not None:
                progress(offset + k, total)

        if (target.model, target.steps) in done:
            results.append(done[(target.model, target.steps)] | {"ref": target.ref, "dataset": target.dataset})
            step(len(seeds))
            continue
        result = _evaluate_one(target, clean, wanted, seeds, data_dir=Path(data_dir), device=device,
                               batch_size=batch_size, progress=step, session_factory=session_factory,
                               extractors=extractors)
        if session_factory is not None:
            _store(session_factory, target, result, clean, run_id)
        results.append(result)
    return {"n": clean["n"], "seed": clean["seed"], "metrics": list(wanted), "models": results}


def _evaluate_one(target: EvalTarget, spec: dict, wanted: tuple[str, ...], seeds: tuple[int, ...], *, data_dir: Path,
                  device: str, batch_size: int, progress: Callable[[int], None],
                  session_factory: sessionmaker[Session] | None, extractors: dict) -> dict[str, Any]:
    t_start = time.perf_counter()
    x, drawn, nfe, seconds = generate(target, seeds, guidance=spec["guidance"], data_dir=data_dir, device=device,
                                      batch_size=batch_size, progress=progress, warm_up="ms_per_image" in wanted)
    values: dict[str, float] = {}
    reference = None
    if any(name in wanted for name in REFERENCE_METRICS):
        from core.metrics import feature_stats, fid_from_stats, images_to_features, kid_from_features, prdc
        from workers.reference import reference_stats

        module = extractors[target.extractor]
        reference = reference_stats(target.dataset, target.extractor, len(seeds), seed=seeds[0], data_dir=data_dir,
                                    device=device, session_factory=session_factory, model=module)
        feats = images_to_features(module, x, device=device)
        if "fid" in wanted:
            values["fid"] = fid_from_stats(reference.mu, reference.sigma, *feature_stats(feats))
        if "kid" in wanted:
            values["kid"] = kid_from_features(reference.features, feats)
        if "precision" in wanted:
            values.update(prdc(reference.features, feats, k=PRDC_K))
    if "accuracy" in wanted:
        from core.metrics.digits_classifier import classify

        values["accuracy"] = float((classify(x, device=device) == drawn.numpy()).mean())
    if "modes_covered" in wanted:
        from core.data import get_benchmark
        from core.toy_metrics import mode_scores

        scores = mode_scores(x, get_benchmark(target.dataset).mixture)
        values["modes_covered"], values["modes_quality"] = float(scores["covered"]), scores["quality"]
    if "alignment" in wanted:
        from core.metrics.alignment import alignment
        from core.metrics.shapes_classifier import shapes_input

        # The classifier reads 32x32 scenes: other sizes are resized as the `shapes` extractor resizes them.
        score = alignment(extractors["alignment"], shapes_input((x.to(device) + 1) * 127.5), drawn)
        values["alignment"], values["alignment_all"] = score.attribute_share, score.all_right
    if "ms_per_image" in wanted:
        values["ms_per_image"], values["images_per_s"] = 1000 * seconds / len(seeds), len(seeds) / seconds
    return {"model": target.model, "ref": target.ref, "steps": target.steps, "nfe": nfe, "dataset": target.dataset,
            "extractor": target.extractor or "", "reference": reference.key if reference else "",
            "reference_cached": reference.cached if reference else None, "prompts": _prompts_label(target),
            **_provenance(len(seeds), seeds[0], seeds[-1], reference.digest if reference else None, bool(reference)),
            "values": {name: values[name] for name in wanted if name in values},
            "seconds": round(time.perf_counter() - t_start, 3)}


def generate(target: EvalTarget, seeds: tuple[int, ...], *, guidance: float = 1.0, data_dir: Path | None = None,
             device: str = "cpu", batch_size: int = 256, progress: Callable[[int], None] | None = None,
             warm_up: bool = False) -> tuple[torch.Tensor, torch.Tensor | list[str] | None, int, float]:
    """(samples [N,...] on the CPU, what each sample was drawn for: its class, its prompt or None, NFE per sample,
    seconds spent generating).

    Only generation is timed, not drawing noise: the sampler calls and, for a text-to-image model, encoding the prompts
    and decoding the latents, with the device synchronised around each batch. `warm_up` runs one batch of two samples
    first, untimed, so one-off start-up costs do not count as speed."""
    sampler = _text_sampler if target.prompts is not None else _sampler
    shape, draws, drawn, run, nfe = sampler(target, seeds, guidance, data_dir, device)

    def batch(lo: int, hi: int) -> tuple[torch.Tensor, float]:
        noise = seeded_noise(seeds[lo:hi], shape, draws, device=device)
        _synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = run(noise, lo, hi)
        _synchronize(device)
        return out.cpu(), time.perf_counter() - t0

    if warm_up:
        batch(0, min(2, len(seeds)))
    chunks, seconds = [], 0.0
    for lo in range(0, len(seeds), batch_size):
        out, dt = batch(lo, min(lo + batch_size, len(seeds)))
        chunks.append(out)
        seconds += dt
        if progress is not None:
            progress(lo + len(out))
    return torch.cat(chunks), drawn, nfe, seconds


def _sampler(target: EvalTarget, seeds: tuple[int, ...], guidance: float, data_dir, device: str):
    """(noise shape, noise draws, class of each seed or None, run(noise, lo, hi) -> the samples of seeds[lo:hi], NFE per
    sample) of a model without prompts."""
    from workers.local import _student_sampler, _teacher_sampler

    teacher = target.kind == "teacher"
    request = SampleRequest(model=_request_model(target), seeds=seeds, steps=target.steps, guidance=guidance,
                            class_id=0 if teacher and target.num_classes else None)  # NFE of conditional calls
    info, sample, draws, nfe, _title, _step = (_teacher_sampler if teacher else _student_sampler)(request, data_dir, device)
    classes = torch.tensor(seeds, dtype=torch.long) % info.num_classes if info.num_classes else None

    def run(noise: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return sample(noise, None if classes is None else classes[lo:hi].to(device))

    return info.data_shape, draws, classes, run, nfe


def _text_sampler(target: EvalTarget, seeds: tuple[int, ...], guidance: float, data_dir, device: str):
    """The same for a text-to-image model, with the prompt of each seed: run encodes the prompts, samples latents
    (workers/sample_text.py, as `sample --prompts` does) and decodes them through the teacher's VAE to [-1, 1]."""
    from workers.sample_text import _student, _teacher

    prompts = target.prompts.prompts(seeds)
    request = SampleRequest(model=_request_model(target), seeds=seeds, steps=target.steps, guidance=guidance,
                            prompts=tuple(dict.fromkeys(prompts)))
    sd, sample, draws, nfe, _title, _step = (_teacher if target.kind == "teacher" else _student)(request, data_dir,
                                                                                                device)

    def run(noise: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return sd.decode(sample(noise, sd.encoder.encode(prompts[lo:hi]).to(device)))

    return sd.latent_shape, draws, prompts, run, nfe


def _request_model(target: EvalTarget) -> str:
    return ModelRef.teacher(target.source).text if target.kind == "teacher" else target.source


def _prompts_label(target: EvalTarget) -> str:
    """Evaluation.prompts: what a text-to-image model drew its prompts from; '' for other models."""
    return target.prompts.label if target.prompts is not None else ""


def _synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _store(factory: sessionmaker[Session], target: EvalTarget, result: dict, spec: dict, run_id: int | None) -> None:
    """One transaction per model: a resumed job finds a model either fully stored or not at all."""
    with session_scope(factory) as session:
        for metric, value in result["values"].items():
            if not np.isfinite(value):
                continue  # reported in the result, not stored: no ranking can use it
            repo.record_evaluation(session=session, model=target.model, metric=metric, value=value, n=result["n"],
                                   extractor=result["extractor"], reference=result["reference"],
                                   reference_hash=result["reference_hash"], seed=result["seed_first"],
                                   seed_last=result["seed_last"], steps=target.steps, nfe=result["nfe"],
                                   prompts=result["prompts"], run_id=run_id)


def _stored_by_run(factory: sessionmaker[Session] | None, run_id: int | None) -> dict[tuple[str, int], dict]:
    """Results this run stored before it was interrupted, by (model, steps). A model's rows are stored in one
    transaction, so a model with rows has them all."""
    if factory is None or run_id is None:
        return {}
    found: dict[tuple[str, int], dict] = {}
    with session_scope(factory) as session:
        for row in repo.list_evaluations(session=session, run_id=run_id):
            entry = found.setdefault((row.model, row.steps), {
                "model": row.model, "steps": row.steps, "nfe": row.nfe, "extractor": row.extractor,
                "reference": row.reference, "reference_cached": None, "prompts": row.prompts,
                **_provenance(row.n, row.seed, row.seed_last, row.reference_hash, bool(row.reference)),
                "values": {}, "seconds": 0.0, "resumed": True})
            entry["values"][row.metric] = row.value
    return found


def _provenance(n: int, seed_first: int, seed_last: int, reference_hash: str | None, measured: bool) -> dict[str, Any]:
    """What a result was measured on; `measured`: whether any value was compared with reference statistics."""
    return {"n": n, "reference_hash": reference_hash, "seed_first": seed_first, "seed_last": seed_last,
            "small_sample": is_small_sample(n) if measured else None}


def folder_fid(dir_a: Path, dir_b: Path, extractor: str, *, device: str = "cpu") -> dict[str, Any]:
    """FID between two image folders through clean-fid with our extractor (`distill-studio fid`); a small-sample
    estimate when either folder holds fewer than SMALL_SAMPLE_N images."""
    from core.metrics import check_folder
    from core.metrics import folder_fid as fid

    n_a, n_b = len(check_folder(dir_a)), len(check_folder(dir_b))
    value = fid(dir_a, dir_b, extractor, device=device)
    return {"fid": value, "dir_a": str(dir_a), "dir_b": str(dir_b), "extractor": extractor, "n_a": n_a, "n_b": n_b,
            "small_sample": is_small_sample(min(n_a, n_b))}
