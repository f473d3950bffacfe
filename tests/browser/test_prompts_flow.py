"""The text-to-image flow in real Chromium: a researcher trains a short `shapes` student from the form, compares it
with the teacher on three typed prompts, exports it and loads the downloaded archive with diffusers, creates a prompt
study of the teacher against it, two raters rate it at /rate with the keyboard reading each prompt, and the results
show both criteria; the exported votes carry their prompts."""

from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Studio, shoot
from tests.browser.helpers import choose, fill, pick_students, queued_id, run_row, start_run, tab
from tests.browser.test_study_flow import QUOTA, USERS, WAIT_MS, rate_with_keys, sign_in

PROMPTS = ["a small red circle on the left, on a white background",
           "a large blue square at the top, on a black background",
           "a large yellow triangle at the bottom and a small green star on the right, on a gray background"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studio = Studio(tmp_path_factory.mktemp("prompts") / "data", env={"STUDIO_USERS": USERS}).wait()
    yield studio
    studio.stop()


def test_a_shapes_student_from_form_to_prompt_study_and_a_loadable_export(browser, server, tmp_path):
    alice, page = sign_in(browser, server.url, "alice", "alice-pw")
    # 1. Runs: a 1-step DMD2 student of shapes on its own captioned scenes (a few iterations: the flow is tested).
    start_run(page, teacher="shapes", method="dmd2", steps="1", iterations="4", preset="shapes")
    run_id = queued_id(page, "dmd2")
    expect(page.locator("#form-status")).to_contain_text("on its benchmark's captioned scenes")
    expect(run_row(page, run_id)).to_contain_text("succeeded", timeout=WAIT_MS)
    expect(page.locator("#preview-image img")).to_be_visible()

    # 2. Compare: the teacher at 4 guided steps and the student on three typed prompts, one seed: a header row naming
    # each prompt, then a row per model.
    compare = tab(page, "Compare")
    pick_students(page, compare, "shapes", [f"run {run_id} · dmd2-1 · succeeded"])
    fill(compare, "Teacher steps", "4")
    compare.get_by_label("Prompts").fill("\n".join(PROMPTS))
    fill(compare, "Seeds", "0")
    compare.get_by_role("button", name="Compare", exact=True).click()
    status = page.locator("#cmp-status")
    expect(status).to_contain_text("2 models × 3 prompts × 1 seeds")
    expect(status).to_contain_text("all images ready", timeout=WAIT_MS)
    grid = page.locator("#cmp-grid")
    expect(grid.locator("img")).to_have_count(9)
    expect(grid).to_contain_text(f"{PROMPTS[2]} · seed 0")
    expect(grid).to_contain_text(f"dmd2 run {run_id} · step 4 · seed 0 · 1 NFE")
    shoot(page, "compare-prompts")

    # 3. Export the student, download the archive and load it with diffusers as the page says.
    runs = tab(page, "Runs")
    choose(page, runs, "Run", f"#{run_id} distill · shapes · dmd2")
    runs.get_by_role("button", name="Export", exact=True).click()
    info = page.locator("#export-info")
    expect(info).to_contain_text("succeeded", timeout=WAIT_MS)
    expect(info).to_contain_text("from_pretrained")
    runs.get_by_role("button", name="Download archive").click()
    link = page.locator("#export-archive a").first
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    with zipfile.ZipFile(download.value.path()) as zf:
        zf.extractall(tmp_path)
    folder = tmp_path / f"student-run-{run_id}"
    exported = json.loads(next((server.data_dir / "runs").glob("*/export.json")).read_text())
    scope: dict = {}
    exec("\n".join(exported["load"]).replace(exported["out"], str(folder)), scope)  # the lines on the page
    assert scope["images"][0].size == (32, 32)

    # 4. A prompt study: the teacher at 4 steps (the anchor) against the student on the same three prompts.
    study = tab(page, "Study")
    fill(study, "Study name", "Shapes round 1")
    pick_students(page, study, "shapes", [f"run {run_id} · dmd2-1 · succeeded"])
    fill(study, "Teacher steps", "4")
    study.get_by_label("Prompts").fill("\n".join(PROMPTS))
    fill(study, "Seeds", "0-1")
    fill(study, "Pairs per model pair", "4")
    fill(study, "Gold %", "25")
    fill(study, "Repeat %", "0")
    fill(study, "Quota per rater", str(QUOTA))
    study.get_by_role("button", name="Create study").click()
    expect(page.locator("#st-create-status")).to_contain_text("Study 1 created with 2 variants")
    expect(page.locator("#st-summary")).to_contain_text("3 prompts")
    expect(page.locator("#st-summary")).to_contain_text("all images ready", timeout=WAIT_MS)
    study.get_by_role("button", name="Build pool and open").click()
    expect(page.locator("#st-action")).to_contain_text("Study 1 is open: 4 pairs and 3 gold pairs")

    # 5. Two raters, keyboard only; each pair is shown under its prompt, never a model's name.
    for rater, keys in (("rob", [("1", "q"), ("2", "w"), ("1", "q"), ("1", "e"), ("3", "q")]),
                        ("rae", [("1", "q"), ("1", "w"), ("2", "q"), ("4", "r"), ("1", "q")])):
        context, rate = sign_in(browser, server.url + "rate/", rater, f"{rater}-pw")
        expect(rate.locator("#rate-prompt")).to_contain_text("the prompt: “")
        expect(rate.locator("#rate-prompt")).not_to_contain_text("shapes")
        rate_with_keys(rate, keys)
        context.close()

    # 6. Results for both criteria, then the exported votes with their prompts.
    study.get_by_label("Bootstrap rounds").fill("200")
    study.get_by_role("button", name="Compute results").click()
    ratings = page.locator("#st-ratings")
    expect(ratings).to_contain_text("teacher shapes @ 4 steps, w=4", timeout=60_000)
    expect(ratings).to_contain_text(f"dmd2-1 run {run_id} @ step 4")
    expect(page.locator("#st-results")).to_contain_text("quality:")
    study.get_by_label("alignment").check()
    expect(page.locator("#st-results")).to_contain_text("alignment:")
    expect(ratings).to_contain_text("1000")
    shoot(page, "study-prompts")
    study.get_by_role("button", name="Export votes").click()
    link = page.locator("#st-files tr").filter(has_text="study-1-alignment").locator("a").first
    with page.expect_download() as votes:
        link.click()
    frame = pd.read_csv(io.BytesIO(open(votes.value.path(), "rb").read()))
    assert len(frame) > 0 and set(frame["prompt"]) <= set(PROMPTS)
    alice.close()
