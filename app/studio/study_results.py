"""The Study tab's results: the report of core/study (docs/study.md#statistics) as tables a researcher reads at a glance.

Ratings are teacher-anchored Bradley-Terry points (the teacher is 1000; -50 means the teacher wins about 57 %) with
condition-cluster bootstrap intervals; a rating stays provisional until its interval is narrow enough."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from app.studio.context import Studio
from app.studio.study_export import votes_with_labels
from core.study.report import study_report

RATING_COLUMNS = ["rank", "variant", "rating", "95% CI (conditions)", "95% CI (raters)", "votes", "decisive", "status"]
RATER_COLUMNS = ["rater", "votes", "median latency ms", "fast share", "left rate", "left p", "tie rate", "both bad",
                 "gold accuracy", "repeat consistency", "flagged"]


def _r(x, digits: int = 1):
    return None if x is None else round(float(x), digits)


def compute(ctx: Studio, study_id: int, n_boot: int, seed: int = 0) -> dict[str, Any]:
    frame, teacher, _ = votes_with_labels(ctx.factory, study_id, include_gold=True)
    if frame.empty:
        raise ValueError("study: no votes yet")
    return study_report(frame, teacher, n_boot=n_boot, seed=seed)


def tables(report: dict[str, Any], criterion: str) -> dict[str, Any]:
    """What the results view shows for one criterion."""
    part = report["criteria"].get(criterion) or {"error": "no votes"}
    out: dict[str, Any] = {"summary": "", "ratings": pd.DataFrame(columns=RATING_COLUMNS), "matrix": pd.DataFrame(),
                           "tests": pd.DataFrame(), "raters": _raters(report["raters"]), "plan": pd.DataFrame()}
    ex = report["exclusions"]
    head = (f"{report['n_votes']} votes · bootstrap {report['n_boot']} rounds by condition (seed {report['seed']}) · "
            "excluded from fits: " + ", ".join(f"{k.replace('_', ' ')} {len(v) if isinstance(v, list) else v}"
                                               for k, v in ex.items() if isinstance(v, (int, list))))
    bias = report["side_bias"]["overall"]
    if bias.get("n"):
        head += f"\n\nSide bias: left chosen in {bias['rate']:.0%} of {bias['n']} decisive votes (p = {bias['p_value']:.3g})."
    if "error" in part:
        out["summary"] = f"{head}\n\n**{criterion}:** {part['error']}"
        return out
    seat = part["seat_term"]
    out["summary"] = (f"{head}\n\n**{criterion}:** {part['votes']} votes, {part['decisive']} decisive, ties "
                      f"{part['tie_rate']:.0%}, both bad {part['both_bad_rate']:.0%}; left-seat term "
                      f"{_r(seat['points'])} points [{_r(seat['lower'])}, {_r(seat['upper'])}]" +
                      (f"; unbounded (won or lost everything): {', '.join(part['unbounded'])}" if part["unbounded"] else ""))
    out["ratings"] = pd.DataFrame([[r["rank"], r["variant"], _r(r["rating"]), f"[{_r(r['lower'])}, {_r(r['upper'])}]",
                                    f"[{_r(r['rater_lower'])}, {_r(r['rater_upper'])}]", r["votes"], r["decisive"],
                                    r["status"]] for r in sorted(part["ratings"], key=lambda r: (r["rank"], -r["rating"]))],
                                  columns=RATING_COLUMNS)
    m = part["matrices"]
    out["matrix"] = pd.DataFrame([[v, *[None if x is None else round(x, 3) for x in row]]
                                  for v, row in zip(m["variants"], m["win_rate"])], columns=["row beats column", *m["variants"]])
    out["tests"] = pd.DataFrame([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()}
                                 for t in part["pair_tests"]])
    out["plan"] = pd.DataFrame([{"true preference": r["p"], "decisive votes": r["decisive"],
                                 "votes with ties": r["total"]} for r in part["votes_needed"]["needed"]])
    return out


def _raters(rows: list[dict]) -> pd.DataFrame:
    keys = ["rater", "votes", "median_latency_ms", "fast_share", "left_rate", "left_p", "tie_rate", "both_bad_rate",
            "gold_accuracy", "repeat_consistency", "flagged"]
    return pd.DataFrame([[(_r(r.get(k), 3) if isinstance(r.get(k), float) else
                           (", ".join(r[k]) if isinstance(r.get(k), list) else r.get(k))) for k in keys] for r in rows],
                        columns=RATER_COLUMNS)


def build_results(ctx: Studio, pick: gr.Dropdown) -> None:
    gr.Markdown("### Results")
    with gr.Row():
        criterion = gr.Radio(["quality", "alignment"], value="quality", label="Criterion", elem_id="st-criterion")
        rounds = gr.Number(1000, precision=0, label="Bootstrap rounds", elem_id="st-rounds", interactive=True,
                           info="≥ 1000 for any number you report")
        go = gr.Button("Compute results", elem_id="st-compute")
    report_state = gr.State(None)
    summary = gr.Markdown(elem_id="st-results")
    ratings = gr.Dataframe(label="Teacher-anchored ratings (teacher = 1000)", interactive=False, elem_id="st-ratings")
    matrix = gr.Dataframe(label="Observed win rate (row beats column; ties count half)", interactive=False,
                          elem_id="st-matrix")
    tests = gr.Dataframe(label="Per-pair binomial tests (Wilson intervals, Holm-corrected)", interactive=False,
                         elem_id="st-tests")
    raters = gr.Dataframe(label="Raters", interactive=False, elem_id="st-raters")
    plan = gr.Dataframe(label="Decisive votes needed (with the observed tie rate)", interactive=False, elem_id="st-plan")
    outputs = [summary, ratings, matrix, tests, raters, plan]

    def show(report, chosen):
        t = tables(report, chosen)
        return [t["summary"], t["ratings"], t["matrix"], t["tests"], t["raters"], t["plan"]]

    def on_compute(study_id, chosen, n_boot, request: gr.Request):
        try:
            ctx.require_researcher(request)
            if study_id in (None, ""):
                raise ValueError("study: select a study first")
            if n_boot is None or not 10 <= int(n_boot) <= 100_000:
                raise ValueError(f"bootstrap rounds: between 10 and 100000, got {n_boot!r}")
            report = compute(ctx, int(study_id), int(n_boot))
        except (ValueError, PermissionError) as exc:
            return [None, f"**Error** — {exc}"] + [gr.skip()] * (len(outputs) - 1)
        return [report, *show(report, chosen)]

    go.click(on_compute, [pick, criterion, rounds], [report_state, *outputs], concurrency_limit=2)
    criterion.change(lambda report, chosen: show(report, chosen) if report else [gr.skip()] * len(outputs),
                     [report_state, criterion], outputs)
