"""How the CLI and the studio state what an FID/KID was measured on: n, the extractor, the reference statistics with
their content hash and the seed range, and whether the figure is only a small-sample estimate
(core.eval_specs.SMALL_SAMPLE_N). The provenance dicts are those of repo.leaderboard and workers.evaluate.evaluate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.eval_specs import SMALL_SAMPLE_N, is_small_sample

SMALL_SAMPLE_LABEL = f"small-sample estimate: n < {SMALL_SAMPLE_N}"
UNKNOWN_HASH = "hash unknown"  # a NULL hash: the features measured against are not known for certain


def seeds_text(p: Mapping[str, Any]) -> str:
    return f"{p['seed_first']}-{p['seed_last']}"


def reference_text(p: Mapping[str, Any]) -> str:
    """'digits-digits-16-500 sha256:ab12cd34ef56', or '-' when nothing was measured against a reference."""
    if not p["reference"]:
        return "-"
    return f"{p['reference']} {p.get('reference_hash') or UNKNOWN_HASH}"


def describe(p: Mapping[str, Any]) -> str:
    """'n=10, extractor digits, reference digits-digits-16-10 sha256:ab12cd34ef56, seeds 0-9; small-sample estimate:
    n < 2000' (the label only below SMALL_SAMPLE_N)."""
    text = f"n={p['n']}, extractor {p['extractor']}, reference {reference_text(p)}, seeds {seeds_text(p)}"
    return f"{text}; {SMALL_SAMPLE_LABEL}" if is_small_sample(p["n"]) else text


def flag_small_samples(board: dict[str, Any]) -> dict[str, Any]:
    """repo.leaderboard's board with "small_sample" on each row and each provenance entry (in place, returned). A row
    is a small-sample one when any of its values measured against a reference is; None when it has none."""
    for row in board["rows"]:
        for p in row["provenance"].values():
            p["small_sample"] = is_small_sample(p["n"])
        row["small_sample"] = any(p["small_sample"] for p in row["provenance"].values()) if row["provenance"] else None
    return board


def other_provenance(row: Mapping[str, Any]) -> list[str]:
    """'kid: n=1000, ...' for the row's values measured on other samples or another reference than the row's own
    (its FID's), grouped by what they were measured on; [] in the usual case of one evaluation."""
    keys = ("n", "extractor", "reference", "reference_hash", "seed_first", "seed_last")
    own = tuple(row[k] for k in keys)
    groups: dict[tuple, list[str]] = {}
    for metric, p in row["provenance"].items():
        if tuple(p[k] for k in keys) != own:
            groups.setdefault(tuple(p[k] for k in keys), []).append(metric)
    return [f"{', '.join(metrics)}: {describe(dict(zip(keys, key)))}" for key, metrics in groups.items()]


def row_note(row: Mapping[str, Any], marker: str = "") -> str:
    """The leaderboard's note on a row: the small-sample label (after `marker`) when the row's own figures are
    small-sample estimates, and any values measured on other samples (after `marker` when they are)."""
    own = [f"{marker}{SMALL_SAMPLE_LABEL}"] if row["reference"] and is_small_sample(row["n"]) else []
    return "; ".join(own + [(marker if SMALL_SAMPLE_LABEL in note else "") + note for note in other_provenance(row)])
