"""A researcher's whole flow in real Chromium against a live `distill-studio up`: start a digits (and a toy2d) run from the form,
watch it succeed, compare it with the teacher on the same seeds, evaluate it onto the leaderboard; screenshots of each
tab; no request leaves localhost. Then the error paths: invalid form values, a cancelled run, a failed run's message.

Tests in this module share one studio (and its one local worker), so they run in file order."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from sqlalchemy import func, select

from core.specs import SHAPES_GUIDANCE
from storage.db import make_engine
from storage.models import Run
from tests.browser.conftest import shoot
from tests.browser.helpers import choose, choose_many, fill, pick_students, queued_id, run_row, start_run, tab

RUN_S = 240_000  # ms: a 60-iteration toy2d run, queued behind nothing, takes ~15 s on a loaded 2-core machine


def test_train_compare_and_rank_a_digits_student(page):
    """Train a digits student from the browser, compare it with the teacher at several step
    counts on the same seeds, and see it on the leaderboard."""
    # 1. Runs: start a run from the form; the table follows it to succeeded; its detail shows curves and previews.
    start_run(page, teacher="digits", method="dmd2", steps="1", iterations="24", preset="digits")
    expect(page.locator("#form-status")).to_contain_text("Run 1 queued: dmd2 (1-step) from digits", timeout=30_000)
    row = run_row(page, 1)
    expect(row).to_contain_text("succeeded", timeout=RUN_S)
    expect(row).to_contain_text("100")
    expect(page.locator("#run-summary")).to_contain_text("succeeded")
    expect(page.locator("#preview-image img")).to_be_visible()
    expect(page.locator("#loss-plot")).to_contain_text(re.compile(r"24\s*step"))  # the curves reach the last step
    expect(page.locator("#loss-plot")).to_contain_text("loss/gen")  # drawn, with its legend (not an empty frame)
    expect(page.locator("#run-log")).to_contain_text("step 24/24")
    shoot(page, "runs")

    # 2. Compare: the teacher at 1, 4 and 50 steps and the student, class 3, seeds 0-7: 4 rows x 8 columns.
    compare = tab(page, "Compare")
    pick_students(page, compare, "digits", ["run 1 · dmd2-1 · succeeded"])
    fill(compare, "Teacher steps", "1,4,50")
    choose(page, compare, "Class", "3")
    fill(compare, "Seeds", "0-7")
    compare.get_by_role("button", name="Compare", exact=True).click()
    status = page.locator("#cmp-status")
    expect(status).to_contain_text("4 models × 8 seeds")
    expect(status).to_contain_text("all images ready", timeout=RUN_S)
    grid = page.locator("#cmp-grid")
    expect(grid.locator("img")).to_have_count(32)
    for caption in ("teacher digits · seed 0 · 1 NFE", "teacher digits · seed 7 · 50 NFE",
                    "dmd2 run 1 · step 24 · seed 5 · 1 NFE"):
        expect(grid).to_contain_text(caption)
    expect(grid).not_to_contain_text("pending")
    shoot(page, "compare")
    grid.locator("img").nth(3 * 8 + 5).click()  # the student's seed-5 cell, against the teacher's 50-step one
    expect(page.locator("#cmp-slider")).to_contain_text("teacher digits · seed 5 · 50 NFE  |  dmd2 run 1 · step 24 · seed 5")
    expect(page.locator("#cmp-slider img")).to_have_count(2)
    shoot(page, "compare-slider")

    # 3. Leaderboard: evaluate the student and the teacher's 1-step sampler; both rows appear, FID and accuracy.
    board = tab(page, "Leaderboard")
    choose_many(page, board, "Models", ["run 1 · dmd2-1 of digits", "teacher digits @ 1 steps"])
    for metric in ("kid", "precision", "speed"):
        board.get_by_label(metric, exact=True).uncheck()
    board.get_by_label("accuracy", exact=True).check()
    fill(board, "Samples per model", "200")
    board.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#lb-status")).to_contain_text("queued")
    table = page.locator("#lb-table")
    expect(table).to_contain_text("run:1 dmd2-1 of digits", timeout=RUN_S)
    expect(table).to_contain_text("teacher:digits", timeout=RUN_S)
    # The line under the plots names the samples behind their points (a legend can be cut short by the page) and
    # the reference statistics.
    expect(page.locator("#lb-references")).to_contain_text("FID vs NFE: n = 200 († small-sample estimate",
                                                            timeout=RUN_S)
    expect(page.locator("#lb-references")).to_contain_text("FID measured against: digits-")
    shoot(page, "leaderboard")

    teachers = tab(page, "Teachers")
    choose(page, teachers, "Teacher", "digits")
    expect(page.locator("#t-status")).to_contain_text("digits · 50 DDIM steps · seeds 0-15", timeout=RUN_S)
    expect(page.locator("#t-grid img")).to_have_count(16)
    shoot(page, "teachers")
    assert page.outside == []


def test_a_toy2d_student_against_the_teacher(page):
    """Point teachers compare as one scatter per model over all the seeds."""
    start_run(page, method="dmd2", steps="1", iterations="60")
    run_id = queued_id(page)
    expect(run_row(page, run_id)).to_contain_text("succeeded", timeout=RUN_S)
    compare = tab(page, "Compare")
    pick_students(page, compare, "toy2d-ring", [f"run {run_id} · dmd2-1 · succeeded"])
    fill(compare, "Teacher steps", "1,50")
    fill(compare, "Seeds", "0-511")
    compare.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#cmp-status")).to_contain_text("3 models × 512 seeds")
    expect(page.locator("#cmp-status")).to_contain_text("all images ready", timeout=RUN_S)
    grid = page.locator("#cmp-grid")
    expect(grid.locator("img")).to_have_count(3)
    for caption in ("teacher toy2d-ring · 1 NFE", "teacher toy2d-ring · 50 NFE", f"dmd2 run {run_id} · step 60 · 1 NFE"):
        expect(grid).to_contain_text(caption)
    assert page.outside == []


def run_count(studio) -> int:
    engine = make_engine(f"sqlite:///{studio.data_dir / 'studio.db'}")
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(Run)).scalar_one()
    finally:
        engine.dispose()


def test_invalid_values_are_rejected_inline_and_queue_nothing(page, studio):
    before = run_count(studio)
    start_run(page, method="emd", steps="4", iterations="60")
    expect(page.locator("#form-status")).to_contain_text("student_steps: emd is a one-step method")
    start_run(page, method="dmd2", steps="1", iterations="0")
    expect(page.locator("#form-status")).to_contain_text("iterations")
    start_run(page, method="dmd2", steps="1", iterations="60", knobs={"ttur_ratio": "0"})
    expect(page.locator("#form-status")).to_contain_text("ttur_ratio must be an integer >= 1")
    assert run_count(studio) == before


def test_a_text_to_image_teacher_asks_for_prompts_and_refuses_a_method_without_images(page, studio, tmp_path):
    before = run_count(studio)
    runs = tab(page, "Runs")
    expect(runs.locator("#new-text")).to_be_hidden()  # toy2d-ring takes no prompts
    choose(page, runs, "Teacher", "shapes")
    expect(runs.locator("#new-text-help")).to_contain_text("own captioned scenes")
    expect(runs.get_by_label("Preset", exact=True)).to_have_value("shapes")  # named for the teacher's benchmark
    choose(page, runs, "Method", "mmd")
    expect(runs.locator("#new-steps")).to_contain_text("mmd: ")
    expect(runs.get_by_label("guidance", exact=True)).to_have_value(f"{SHAPES_GUIDANCE:g}")  # on the form, not folded
    # Prompts alone: MMD trains on images, and a prompt file replaces the benchmark's scenes, so it has none.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle on the left, on a white background\n")
    upload = runs.locator("#new-prompts input[type=file]")
    upload.set_input_files(str(prompts))
    runs.get_by_role("button", name="Start run").click()
    expect(page.locator("#form-status")).to_contain_text("data: mmd with these settings trains on real images")
    bad = tmp_path / "bad prompts.txt"
    bad.write_text("\n\n")
    runs.locator("#new-prompts").get_by_role("button", name="Clear").click()
    upload.set_input_files(str(bad))
    runs.get_by_role("button", name="Start run").click()
    expect(page.locator("#form-status")).to_contain_text("prompts: bad prompts.txt has no prompts")
    assert run_count(studio) == before


def test_a_text_to_image_teachers_card_a_typed_prompt_and_a_comparison_by_prompt(page):
    """The shapes teacher's card draws fixed prompts (a row each); a typed prompt and seed is drawn on demand; Compare
    lays out prompt x seed columns under a header cell naming each prompt in full."""
    teachers = tab(page, "Teachers")
    choose(page, teachers, "Teacher", "shapes")
    expect(page.locator("#t-status")).to_contain_text("4 fixed prompts (a row each)", timeout=RUN_S)
    expect(page.locator("#t-grid img")).to_have_count(16)
    prompt = "a large green star at the bottom, on a black background"
    fill(teachers, "Prompt", prompt)
    fill(teachers, "Seed", "3")
    teachers.get_by_role("button", name="Draw").click()
    expect(page.locator("#t-try-status")).to_contain_text(f'"{prompt}" · seed 3 · 1 models', timeout=RUN_S)
    expect(page.locator("#t-try-grid img")).to_have_count(1)

    compare = tab(page, "Compare")
    choose(page, compare, "Teacher", "shapes")
    expect(compare.get_by_label("Teacher guidance")).to_have_value(f"{SHAPES_GUIDANCE:g}")
    fill(compare, "Teacher steps", "4")
    compare.get_by_label("Prompts").fill(f"{prompt}\na small red circle on the left, on a white background")
    fill(compare, "Seeds", "0-1")
    compare.get_by_role("button", name="Compare", exact=True).click()
    status = page.locator("#cmp-status")
    expect(status).to_contain_text("1 models × 2 prompts × 2 seeds")
    expect(status).to_contain_text("all images ready", timeout=RUN_S)
    grid = page.locator("#cmp-grid")
    expect(grid.locator("img")).to_have_count(8)  # a header row of 4 prompt x seed cells, then the teacher's row
    expect(grid).to_contain_text(f"{prompt} · seed 1")
    expect(grid).to_contain_text("teacher shapes · w=4 · seed 0 · 8 NFE")


def test_cancel_a_running_run(page):
    start_run(page, method="dmd2", steps="1", iterations="200000")
    run_id = queued_id(page)
    expect(run_row(page, run_id)).to_contain_text("running", timeout=RUN_S)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#run-action-status")).to_contain_text(f"Run {run_id}: cancelling")
    expect(run_row(page, run_id)).to_contain_text("cancelled", timeout=RUN_S)


def test_a_failed_run_shows_why(page):
    # An absurd learning rate is valid input but diverges: the loop stops on the first non-finite loss.
    start_run(page, method="dmd2", steps="1", iterations="400", knobs={"lr_gen": "1e30", "lr_aux": "1e30"})
    row = run_row(page, queued_id(page))
    expect(row).to_contain_text("failed", timeout=RUN_S)
    expect(row).to_contain_text("diverged")
    expect(page.locator("#run-summary")).to_contain_text("Error")
