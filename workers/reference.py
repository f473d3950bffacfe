"""Reference statistics: features of the real data an evaluation is measured against, computed once per
(dataset, extractor, resolution, n) and reused by every later evaluation; for a built-in prompt set the dataset names
the seeds as well (core.eval_specs.reference_dataset: shapes-test-seeds0-999), since its items are the scenes those
seeds draw.

On disk: DATA_DIR/reference/<dataset>-<extractor>-<resolution>-<n>.npz holding the features (KID, precision/recall)
and their mean and covariance (FID). In the database: a reference_stats row per key with that file's path relative to
the data dir, so every worker sharing the database and the artifact folder finds it. A file that is missing or cannot
be read is computed again; two workers computing the same key at once both write the same file (atomically) and one
row wins.

The data: `digits` is a fixed random subset of n of scikit-learn's 1,797 digits at 16x16 (all of them for n = 1797);
`toy2d-ring` and `toy2d-grid` are n points drawn from the benchmark's exact mixture with a fixed seed; `shapes-test`
and `shapes-heldout` are the rendered scenes seed .. seed + n - 1 of the set (core/eval_prompts.py).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from core.data import digits_tensors, get_benchmark
from core.eval_prompts import set_scenes
from core.eval_specs import REFERENCE_DATA, check_extractor, reference_dataset, reference_key
from core.metrics import feature_stats, images_to_features
from core.shapes import render
from storage import repo
from storage.artifacts import resolve
from storage.db import session_scope

REFERENCE_SEED = 1  # why: one fixed subset / draw per n, whoever computes it


@dataclass(frozen=True)
class Reference:
    key: str               # dataset-extractor-resolution-n: Evaluation.reference of results measured against it
    dataset: str           # what it is drawn from (a prompt set's with its seeds: shapes-test-seeds0-999)
    extractor: str
    resolution: int
    n: int
    features: np.ndarray   # [n, D]
    mu: np.ndarray         # [D]
    sigma: np.ndarray      # [D, D]
    path: Path
    cached: bool           # True: read from the cache, not computed by this call
    digest: str            # features_digest(features): ReferenceStats.content_hash, Evaluation.reference_hash


def reference_samples(dataset: str, n: int, seed: int = 0) -> torch.Tensor:
    """The n reference items: digits as float [n,1,16,16] in [-1, 1], toy2d as points [n,2], a prompt set's scenes of
    seeds seed .. seed + n - 1 as float [n,3,32,32] in [-1, 1] (`seed` matters only to them)."""
    data = REFERENCE_DATA.get(dataset)
    if data is None:
        raise ValueError(f"dataset: {dataset!r} has no reference data (known: {', '.join(REFERENCE_DATA)})")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n: a reference needs at least 2 items, got {n!r}")
    if data.seeded:
        pixels = np.stack([render(scene) for scene in set_scenes(dataset, range(seed, seed + n))])
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if data.size is not None:
        if n > data.size:
            raise ValueError(f"n: {n} is larger than the {dataset} reference ({data.size} images)")
        x, _ = digits_tensors(data.resolution)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(REFERENCE_SEED))
        return x[order[:n]]
    return get_benchmark(dataset).mixture.sample(n, torch.Generator().manual_seed(REFERENCE_SEED)).float()


def reference_stats(dataset: str, extractor: str | None, n: int, *, seed: int = 0, data_dir: Path,
                    device: str = "cpu", session_factory: sessionmaker[Session] | None = None,
                    model: nn.Module | None = None) -> Reference:
    """The reference's features and statistics, from the cache when it has them; computed and cached otherwise.

    extractor: None for the dataset's default. seed: the first seed evaluated (only a prompt set's reference depends on
    it). model: the extractor module, if the caller has it loaded already. Without a session factory only the file
    cache is used.
    """
    data = REFERENCE_DATA.get(dataset)
    if data is None:
        raise ValueError(f"dataset: {dataset!r} has no reference data (known: {', '.join(REFERENCE_DATA)})")
    extractor = check_extractor(extractor, dataset)
    drawn = reference_dataset(dataset, seed, n)
    key = reference_key(drawn, extractor, data.resolution, n)
    ident = {"dataset": drawn, "extractor": extractor, "resolution": data.resolution, "n": n}
    stored = stored_hash = None
    if session_factory is not None:
        with session_scope(session_factory) as session:
            row = repo.get_reference_stats(session=session, **ident)
            stored, stored_hash = (row.path, row.content_hash) if row is not None else (None, None)
    path = resolve(Path(data_dir), stored or f"reference/{key}.npz")

    # 1. The cache, hashed as read: the row then names the features every evaluation against it used.
    found = _load(path, key)
    if found is not None:
        digest = features_digest(found[0])
        if session_factory is not None and (stored is None or stored_hash != digest):
            _record(session_factory, ident, data_dir, path, digest)
        return Reference(key, drawn, extractor, data.resolution, n, *found, path=path, cached=True, digest=digest)

    # 2. Compute, write the file atomically, record it.
    samples = reference_samples(dataset, n, seed)
    features = images_to_features(model if model is not None else extractor, samples, device=device).astype(np.float32)
    mu, sigma = feature_stats(features)
    _save(path, key, features, mu, sigma)
    digest = features_digest(features)
    if session_factory is not None:
        _record(session_factory, ident, data_dir, path, digest)
    return Reference(key, drawn, extractor, data.resolution, n, features, mu, sigma, path=path, cached=False,
                     digest=digest)


def features_digest(features: np.ndarray) -> str:
    """The content hash of reference features: sha256 of their float32 values and shape, as "sha256:" + 12 hex
    digits. The features, not the .npz file: the zip stamps its write time, so a recomputed file with the same
    features would hash differently."""
    array = np.ascontiguousarray(features, dtype=np.float32)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()[:12]}"


def _load(path: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(features, mu, sigma) from a cache file, or None when it is missing, unreadable or for another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return z["features"], z["mu"], z["sigma"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _save(path: Path, key: str, features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, key=np.array(key), features=features, mu=mu, sigma=sigma)
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it


def _record(factory: sessionmaker[Session], ident: dict, data_dir: Path, path: Path, digest: str) -> None:
    rel = path.resolve().relative_to(Path(data_dir).resolve()).as_posix()
    try:
        with session_scope(factory) as session:
            repo.record_reference_stats(session=session, path=rel, content_hash=digest, **ident)
    except IntegrityError:
        pass  # another worker recorded the same key at the same moment: its row names the same file
