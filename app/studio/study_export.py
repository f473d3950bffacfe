"""A study's votes for researchers: the frame core/study reads (variants named by their labels) and the FastChat
clean-battle export (docs/study.md#export). Shared by the Study tab and `distill-studio study export`; no Gradio here."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from core.study.export import fastchat_rows
from core.study.votes import CRITERIA
from storage import studies, vote_rows
from storage.db import session_scope

BROKEN = "gold: broken image"  # the corrupted side of a gold pair has no variant


def votes_with_labels(factory: sessionmaker[Session], study_id: int, *, include_gold: bool) -> tuple[pd.DataFrame, str, str]:
    """(votes with left/right as variant labels, the teacher's label, the study's salt)."""
    with session_scope(factory) as session:
        study = studies.get_study(session=session, study_id=study_id)
        if study is None:
            raise ValueError(f"study: no study with id {study_id}")
        labels = {str(v.id): v.label for v in studies.study_variants(session=session, study_id=study_id)}
        teacher = next(v.label for v in studies.study_variants(session=session, study_id=study_id) if v.is_teacher)
        rows = vote_rows.votes_frame(session=session, study_id=study_id, include_gold=include_gold)
        salt = study.salt
        prompts = list(study.config.get("prompts") or [])
    frame = pd.DataFrame(rows, columns=["left", "right", "choice", "criterion", "condition", "rater", "latency_ms",
                                        "is_gold", "gold_expected", "repeat_of", "pair", "voted_at", "seq_in_session",
                                        "seed"])
    # A gold pair checks only the criteria it has an answer for (a wrong-class pair tests alignment, not quality):
    # its other vote is no check, and gold votes never enter a fit, so it is left out.
    frame = frame[~(frame["is_gold"].astype(bool) & frame["gold_expected"].isna())].reset_index(drop=True)
    for side in ("left", "right"):
        frame[side] = frame[side].map(lambda ref: labels.get(ref, BROKEN)).astype(object)
    frame["is_gold"] = frame["is_gold"].astype(bool)
    if prompts:  # a text-to-image study: every vote carries the prompt its condition (gold-N for gold pairs) names
        frame["prompt"] = frame["condition"].map(lambda c: prompts[int(str(c).removeprefix("gold-"))]).astype(object)
    return frame, teacher, salt


def export_rows(factory: sessionmaker[Session], study_id: int, include_gold: bool = False) -> dict[str, list[dict]]:
    """criterion -> FastChat-shaped rows (retracted votes never; gold only on request)."""
    frame, _, salt = votes_with_labels(factory, study_id, include_gold=include_gold)
    if frame.empty:
        return {c: [] for c in CRITERIA}
    return {c: fastchat_rows(frame[frame["criterion"] == c], salt, include_gold=include_gold) for c in CRITERIA}


def write_export(factory: sessionmaker[Session], study_id: int, folder: Path, fmt: str,
                 include_gold: bool = False) -> list[Path]:
    """One file per criterion, study-ID-CRITERION.csv or .jsonl, in `folder`."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"format: csv or jsonl, got {fmt!r}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for criterion, rows in export_rows(factory, study_id, include_gold).items():
        path = folder / f"study-{study_id}-{criterion}.{fmt}"
        if fmt == "csv":
            pd.DataFrame(rows).to_csv(path, index=False)
        else:
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        paths.append(path)
    return paths
