"""Repository functions for runs (docs/architecture.md#jobs): the database, not the broker, decides who runs what.

Every change of a run's owner or status is one conditional UPDATE, so two workers can never both hold a run and a
late worker cannot overwrite a newer state. Functions take a keyword-only session and never commit: the caller's
`session_scope()` makes each call one transaction. Times come from the database's clock unless a test passes `now`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from storage.artifacts import check_relative
from storage.db import server_now
from storage.models import RUN_KINDS, RUN_STATUSES, TERMINAL_STATUSES, Checkpoint, Evaluation, Image, Metric, ReferenceStats, Run

_NO_LEASE = {"lease_owner": None, "lease_expires_at": None}


def _now(session: Session, now: datetime | None) -> datetime:
    if now is not None and now.tzinfo is None:
        raise ValueError(f"now: {now.isoformat()} is naive; pass an aware UTC time")
    return now if now is not None else server_now(session)


def _lease(lease_s: float) -> timedelta:
    if not lease_s > 0:
        raise ValueError(f"lease_s: must be > 0, got {lease_s}")
    return timedelta(seconds=lease_s)


def _update(session: Session, *where, **values) -> int:
    """UPDATE runs ... WHERE ...; the number of rows it changed (0 means the condition no longer held)."""
    result = session.execute(update(Run).where(*where).values(**values), execution_options={"synchronize_session": False})
    return result.rowcount


# -- create and read ---------------------------------------------------------------------------------------

def create_run(*, session: Session, kind: str, spec: dict[str, Any], total: int | None = None,
               out_dir: str | None = None) -> Run:
    """Queue a run; its artifacts go to `out_dir` (relative to the data dir), by default runs/ID."""
    if kind not in RUN_KINDS:
        raise ValueError(f"kind: must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
    if not isinstance(spec, dict):
        raise ValueError(f"spec: must be a JSON object, got {type(spec).__name__}")
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spec: not storable as JSON ({exc})") from None
    run = Run(kind=kind, spec=spec, total=total, out_dir=None if out_dir is None else check_relative(out_dir))
    session.add(run)
    session.flush()
    run.out_dir = run.out_dir or f"runs/{run.id}"
    session.flush()
    return run


def get_run(*, session: Session, run_id: int) -> Run | None:
    """The run as the database has it now (never a stale copy from this session)."""
    return session.get(Run, run_id, populate_existing=True)


def list_runs(*, session: Session, status: str | None = None, kind: str | None = None, limit: int = 100) -> list[Run]:
    """Newest first."""
    query = select(Run).order_by(Run.id.desc()).limit(limit).execution_options(populate_existing=True)
    if status is not None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status: must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        query = query.where(Run.status == status)
    if kind is not None:
        if kind not in RUN_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
        query = query.where(Run.kind == kind)
    return list(session.scalars(query))


# -- the worker's side: claim, heartbeat, record, finish ---------------------------------------------------

def claim_run(*, session: Session, run_id: int, worker: str, lease_s: float, now: datetime | None = None) -> bool:
    """Take a queued run, or a running one whose lease expired; True only for the one worker that wins."""
    now, lease = _now(session, now), _lease(lease_s)
    claimable = or_(Run.status == "queued", and_(Run.status == "running", Run.lease_expires_at < now))
    return _update(session, Run.id == run_id, Run.cancel_requested.is_(False), claimable,
                   status="running", lease_owner=worker, lease_expires_at=now + lease, heartbeat_at=now,
                   attempts=Run.attempts + 1, started_at=now) == 1


def heartbeat(*, session: Session, run_id: int, worker: str, lease_s: float, step: int, total: int | None = None,
              now: datetime | None = None) -> bool:
    """Report progress and extend the lease; False means this worker no longer owns the run and must stop."""
    now, lease = _now(session, now), _lease(lease_s)
    values: dict[str, Any] = {"step": step, "heartbeat_at": now, "lease_expires_at": now + lease}
    if total is not None:
        values["total"] = total
    return _update(session, Run.id == run_id, Run.status == "running", Run.lease_owner == worker, **values) == 1


def record_metrics(*, session: Session, run_id: int, step: int, values: Mapping[str, float]) -> None:
    """One row per scalar, in one INSERT; NaN is stored as NULL (SQLite cannot hold NaN)."""
    rows = [{"run_id": run_id, "step": step, "key": key, "value": None if math.isnan(v) else float(v)}
            for key, v in values.items()]
    if rows:
        session.execute(insert(Metric), rows)


def truncate_metrics(*, session: Session, run_id: int, after_step: int) -> int:
    """Drop metric rows logged after `after_step`: a resumed run logs those steps again from its checkpoint."""
    result = session.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step > after_step))
    return result.rowcount


def latest_metrics(*, session: Session, run_id: int) -> dict[str, float | None]:
    """The last logged value of every metric key of a run."""
    last = (select(Metric.key, func.max(Metric.step).label("step")).where(Metric.run_id == run_id)
            .group_by(Metric.key).subquery())
    rows = session.execute(select(Metric.key, Metric.value, Metric.id)
                           .join(last, and_(Metric.key == last.c.key, Metric.step == last.c.step))
                           .where(Metric.run_id == run_id).order_by(Metric.id))
    return {key: value for key, value, _ in rows}


def record_checkpoint(*, session: Session, run_id: int, step: int, path: str) -> Checkpoint:
    """Record a checkpoint file (relative to the data dir); idempotent, so a retried write cannot fail the run."""
    path = check_relative(path)
    checkpoint = session.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))
    if checkpoint is None:
        checkpoint = Checkpoint(run_id=run_id, step=step, path=path)
        session.add(checkpoint)
    checkpoint.path = path
    session.flush()
    return checkpoint


def take_over(*, session: Session, run_id: int, dead_owner: str, worker: str, lease_s: float,
              now: datetime | None = None) -> bool:
    """Claim a running run from an owner known to be dead (a pool child killed on this host), without waiting for
    its lease to expire; the compare-and-set on the old owner makes it safe against a racing claim."""
    now, lease = _now(session, now), _lease(lease_s)
    return _update(session, Run.id == run_id, Run.status == "running", Run.lease_owner == dead_owner,
                   Run.cancel_requested.is_(False), lease_owner=worker, lease_expires_at=now + lease, heartbeat_at=now,
                   attempts=Run.attempts + 1, started_at=now) == 1


def record_image(*, session: Session, model: str, seed: int, class_id: int | None, steps: int, path: str,
                 run_id: int | None = None, prompt: str = "", checkpoint: int = 0) -> Image:
    """Record a generated sample; the same (model, seed, class, prompt, steps, checkpoint) again only moves its path.

    checkpoint: the training step of the weights that drew it (0 for teachers; a finished run's final step)."""
    path, class_id = check_relative(path), -1 if class_id is None else class_id  # refuse before adding a row
    if checkpoint < 0:
        raise ValueError(f"checkpoint: must be a training step >= 0, got {checkpoint}")
    key = (Image.model == model, Image.seed == seed, Image.class_id == class_id, Image.prompt == prompt,
           Image.steps == steps, Image.checkpoint == checkpoint)
    image = session.scalar(select(Image).where(*key))
    if image is None:
        image = Image(model=model, seed=seed, class_id=class_id, prompt=prompt, steps=steps, checkpoint=checkpoint)
        session.add(image)
    image.path, image.run_id = path, run_id
    session.flush()
    return image


_IN_CHUNK = 500  # seeds per IN (...) list: well inside every backend's bound-parameter limit


def find_images(*, session: Session, model: str, steps: int, checkpoint: int, class_id: int | None,
                seeds: Iterable[int], prompt: str = "") -> dict[int, Image]:
    """The stored images of one gallery row: {seed: Image} for those of `seeds` that exist (class_id None:
    unconditional)."""
    class_id = -1 if class_id is None else class_id
    wanted = sorted(set(seeds))
    found: dict[int, Image] = {}
    for lo in range(0, len(wanted), _IN_CHUNK):
        query = select(Image).where(Image.model == model, Image.steps == steps, Image.checkpoint == checkpoint,
                                    Image.class_id == class_id, Image.prompt == prompt,
                                    Image.seed.in_(wanted[lo:lo + _IN_CHUNK]))
        found.update((image.seed, image) for image in session.scalars(query))
    return found


def checkpoint_steps(*, session: Session, run_id: int) -> list[int]:
    """The steps a run can be sampled at: its recorded checkpoints, plus its final step once it has succeeded."""
    steps = set(session.scalars(select(Checkpoint.step).where(Checkpoint.run_id == run_id)))
    final = session.execute(select(Run.status, Run.step).where(Run.id == run_id)).first()
    if final is not None and final.status == "succeeded":
        steps.add(final.step)
    return sorted(steps)


def finish_run(*, session: Session, run_id: int, worker: str, status: str, error: str | None = None,
               now: datetime | None = None) -> bool:
    """End a run in a terminal status; refused (False) unless `worker` still owns it."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"status: a run finishes as one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
    now = _now(session, now)
    return _update(session, Run.id == run_id, Run.status == "running", Run.lease_owner == worker,
                   status=status, error=error, finished_at=now, **_NO_LEASE) == 1


# -- the user's side: cancel and resume; the reaper --------------------------------------------------------

def request_cancel(*, session: Session, run_id: int, now: datetime | None = None) -> bool:
    """Cancel a queued run at once, or flag a running one for its worker; False if there is nothing to cancel."""
    now = _now(session, now)
    if _update(session, Run.id == run_id, Run.status == "queued", status="cancelled", finished_at=now):
        return True
    return _update(session, Run.id == run_id, Run.status == "running", cancel_requested=True) == 1


def is_cancel_requested(*, session: Session, run_id: int) -> bool:
    return session.scalar(select(Run.cancel_requested).where(Run.id == run_id)) is True


def resume_run(*, session: Session, run_id: int) -> bool:
    """Queue a cancelled or failed run again; its worker resumes from the latest checkpoint."""
    return _update(session, Run.id == run_id, Run.status.in_(("cancelled", "failed")), status="queued",
                   cancel_requested=False, error=None, finished_at=None, **_NO_LEASE) == 1


def mark_dispatched(*, session: Session, run_id: int, now: datetime | None = None) -> None:
    """Record that the run's task message was just sent."""
    _update(session, Run.id == run_id, dispatched_at=_now(session, now))


def take_undispatched(*, session: Session, older_than_s: float, now: datetime | None = None) -> list[int]:
    """Queued runs whose message was sent more than `older_than_s` ago (or never) and that no worker took: their
    message was lost (a broker restarted without persistence, a worker died holding it). Marks them sent again in
    the same UPDATE, so of several reapers only one re-sends each."""
    now = _now(session, now)
    if not older_than_s > 0:
        raise ValueError(f"older_than_s: must be > 0, got {older_than_s}")
    before = now - timedelta(seconds=older_than_s)
    stale = and_(Run.status == "queued", or_(Run.dispatched_at < before,
                                             and_(Run.dispatched_at.is_(None), Run.created_at < before)))
    result = session.execute(update(Run).where(stale).values(dispatched_at=now).returning(Run.id),
                             execution_options={"synchronize_session": False})
    return sorted(result.scalars())


def release_run(*, session: Session, run_id: int, owner: str, now: datetime | None = None) -> bool:
    """Requeue a running run whose owner is known to be dead (or end it cancelled if a cancel was pending)."""
    now = _now(session, now)
    held = (Run.id == run_id, Run.status == "running", Run.lease_owner == owner)
    if _update(session, *held, Run.cancel_requested.is_(True), status="cancelled", finished_at=now, **_NO_LEASE):
        return False
    return _update(session, *held, status="queued", **_NO_LEASE) == 1


def requeue_expired(*, session: Session, now: datetime | None = None) -> list[int]:
    """The reaper: runs whose worker stopped renewing its lease go back to the queue (ids returned), or end
    cancelled if a cancel was pending, since no worker is left to honour it."""
    now = _now(session, now)
    expired = and_(Run.status == "running", Run.lease_expires_at < now)
    _update(session, expired, Run.cancel_requested.is_(True), status="cancelled", finished_at=now, **_NO_LEASE)
    requeued = session.execute(update(Run).where(expired).values(status="queued", **_NO_LEASE).returning(Run.id),
                               execution_options={"synchronize_session": False})
    return sorted(requeued.scalars())


# -- evaluations and reference statistics ------------------------------------------------------------------

def record_evaluation(*, session: Session, model: str, metric: str, value: float, n: int, extractor: str,
                      reference: str, reference_hash: str | None, seed: int, seed_last: int, steps: int, nfe: int,
                      prompts: str = "", run_id: int | None = None) -> Evaluation:
    """Store one measured value with its provenance: the samples drew seeds seed .. seed_last (and, for a text-to-image
    model, their prompts from the prompt set `prompts`), measured against the reference statistics `reference` whose
    content hash is `reference_hash` (None: unknown, or no reference).
    A NaN or infinite value is refused (SQLite cannot hold it, and no ranking can)."""
    if not math.isfinite(value):
        raise ValueError(f"{metric}: value {value} is not finite")
    if seed_last < seed:
        raise ValueError(f"seed_last: {seed_last} is below the first seed {seed}")
    evaluation = Evaluation(model=model, metric=metric, value=float(value), n=n, extractor=extractor,
                            reference=reference, reference_hash=reference_hash, seed=seed, seed_last=seed_last,
                            steps=steps, nfe=nfe, prompts=prompts, run_id=run_id)
    session.add(evaluation)
    session.flush()
    return evaluation


def list_evaluations(*, session: Session, model: str | None = None, run_id: int | None = None) -> list[Evaluation]:
    """Oldest first."""
    query = select(Evaluation).order_by(Evaluation.id)
    if model is not None:
        query = query.where(Evaluation.model == model)
    if run_id is not None:
        query = query.where(Evaluation.run_id == run_id)
    return list(session.scalars(query))


def get_reference_stats(*, session: Session, dataset: str, extractor: str, resolution: int, n: int) -> ReferenceStats | None:
    return session.scalar(select(ReferenceStats).where(
        ReferenceStats.dataset == dataset, ReferenceStats.extractor == extractor,
        ReferenceStats.resolution == resolution, ReferenceStats.n == n))


def record_reference_stats(*, session: Session, dataset: str, extractor: str, resolution: int, n: int,
                           path: str, content_hash: str | None = None) -> ReferenceStats:
    """Record where a reference's statistics file lies (relative to the data dir) and the hash of its features; the
    same key again moves it (and rehashes it when a hash is given)."""
    path = check_relative(path)
    stats = get_reference_stats(session=session, dataset=dataset, extractor=extractor, resolution=resolution, n=n)
    if stats is None:
        stats = ReferenceStats(dataset=dataset, extractor=extractor, resolution=resolution, n=n)
        session.add(stats)
    stats.path = path
    if content_hash is not None:
        stats.content_hash = content_hash
    session.flush()
    return stats


def leaderboard(*, session: Session) -> dict[str, Any]:
    """One row per (model, steps, prompts) with the latest value of every metric measured on it, and FID-vs-NFE series.

    {"rows": [{"model", "steps", "prompts", "nfe", "metrics": {name: value}, PROVENANCE...,
               "provenance": {name: PROVENANCE}, "evaluated_at"}],
     "fid_vs_nfe": {model: [[nfe, fid], ...]}}
    PROVENANCE is "n", "extractor", "reference", "reference_hash" (None: unknown), "seed_first", "seed_last". The
    row's own are those of its latest FID (else of its latest value); "provenance" has every value measured against a
    reference (FID, KID, precision...), since a row's latest values need not share one. Rows are ranked by FID within
    each reference and its hash (an unknown hash after the known ones, rows without FID last, rows measured without a
    reference after all others); a series lists a model's step counts by NFE. A text-to-image model's rows and series
    are apart per prompt set ("prompts"; '' for other models; series "MODEL (PROMPTS)"), since its values on one set
    say nothing of another.
    """
    latest: dict[tuple[str, int, str], dict[str, Evaluation]] = {}
    for evaluation in session.scalars(select(Evaluation).order_by(Evaluation.id)):
        latest.setdefault((evaluation.model, evaluation.steps, evaluation.prompts), {})[evaluation.metric] = evaluation
    rows = []
    for (model, steps, prompts), by_metric in latest.items():
        newest = max(by_metric.values(), key=lambda e: e.id)
        basis = by_metric.get("fid", newest)
        rows.append({"model": model, "steps": steps, "prompts": prompts, "nfe": newest.nfe,
                     "metrics": {name: e.value for name, e in sorted(by_metric.items())}, **_provenance(basis),
                     "provenance": {name: _provenance(e) for name, e in sorted(by_metric.items()) if e.reference},
                     "evaluated_at": newest.created_at.isoformat() if newest.created_at else None})
    rows.sort(key=lambda r: (not r["reference"], r["reference"], r["reference_hash"] is None, r["reference_hash"] or "",
                             "fid" not in r["metrics"], r["metrics"].get("fid", 0.0), r["model"], r["steps"],
                             r["prompts"]))
    series: dict[str, list[list[float]]] = {}
    for row in rows:
        if "fid" in row["metrics"]:
            name = f"{row['model']} ({row['prompts']})" if row["prompts"] else row["model"]  # one series per set
            series.setdefault(name, []).append([row["nfe"], row["metrics"]["fid"]])
    return {"rows": rows, "fid_vs_nfe": {model: sorted(points) for model, points in sorted(series.items())}}


def _provenance(evaluation: Evaluation) -> dict[str, Any]:
    return {"n": evaluation.n, "extractor": evaluation.extractor, "reference": evaluation.reference,
            "reference_hash": evaluation.reference_hash, "seed_first": evaluation.seed, "seed_last": evaluation.seed_last}
