"""The studio page: a header, then the Runs, Teachers, Compare, Leaderboard and Study tabs over one page timer."""

from __future__ import annotations

import gradio as gr

from app.studio.compare import build_compare_tab
from app.studio.context import Studio
from app.studio.leaderboard import build_leaderboard_tab
from app.studio.runs import REFRESH_S, build_runs_tab
from app.studio.study import build_study_tab
from app.studio.teachers import build_teachers_tab


def build_studio(ctx: Studio) -> gr.Blocks:
    with gr.Blocks(title="Distill Studio") as demo:
        header = gr.Markdown("# Distill Studio", elem_id="header")
        # One timer for the page: its ticks stop while the tab is hidden in the browser.
        timer = gr.Timer(REFRESH_S)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Runs", id="runs", elem_id="tab-runs") as runs:
                build_runs_tab(ctx, timer)
            with gr.Tab("Teachers", id="teachers", elem_id="tab-teachers") as teachers:
                build_teachers_tab(ctx, timer)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare:
                build_compare_tab(ctx, timer)
            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard") as leaderboard:
                build_leaderboard_tab(ctx, timer, leaderboard)
            with gr.Tab("Study", id="study", elem_id="tab-study") as study:
                build_study_tab(ctx, timer)
        tabs = [runs, teachers, compare, leaderboard, study]

        def on_load(request: gr.Request):
            """Who is signed in decides what shows: a rater sees no studio tab."""
            user = ctx.user(request) if ctx.accounts.single_user or getattr(request, "username", None) else None
            role = ctx.accounts.role(user) if user else None
            if role == "researcher":
                who = ("single-user mode (localhost)" if ctx.accounts.single_user
                       else f"signed in as **{user}** · [log out](/logout)")
                return [gr.Markdown(f"# Distill Studio\n{who}")] + [gr.Tab(visible=True) for _ in tabs]
            note = (f"# Distill Studio\n**{user}** is a rater account: rate pairs at [/rate](/rate). · [log out](/logout)"
                    if user else "# Distill Studio\nSign in first.")
            return [gr.Markdown(note)] + [gr.Tab(visible=False) for _ in tabs]

        demo.load(on_load, None, [header, *tabs])
    return demo
