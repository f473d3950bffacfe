"""Read-only queries for the studio's pages: they shape rows for display and never write."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Metric, Run


def metric_series(*, session: Session, run_id: int, prefix: str = "", max_points: int = 2000) -> list[dict[str, Any]]:
    """Long rows {step, key, value} of a run's metrics whose key starts with `prefix`, oldest first.

    Long runs are thinned to about `max_points` rows per key by keeping every n-th step (the last is always kept),
    so a plot stays fast without hiding where a curve ends."""
    query = (select(Metric.step, Metric.key, Metric.value).where(Metric.run_id == run_id)
             .order_by(Metric.key, Metric.step))
    if prefix:
        query = query.where(Metric.key.startswith(prefix, autoescape=True))
    by_key: dict[str, list[tuple[int, float | None]]] = {}
    for step, key, value in session.execute(query):
        by_key.setdefault(key, []).append((step, value))
    rows = []
    for key, points in by_key.items():
        stride = max(1, -(-len(points) // max_points))
        kept = points[::stride] if points[-1] in points[::stride] else points[::stride] + [points[-1]]
        rows.extend({"step": step, "key": key, "value": value} for step, value in kept if value is not None)
    return rows


def sample_runs(*, session: Session, status: str = "succeeded") -> list[Run]:
    """Sample runs, newest first: the Compare tab reuses a finished one whose spec matches a request."""
    return list(session.scalars(select(Run).where(Run.kind == "sample", Run.status == status).order_by(Run.id.desc())))
