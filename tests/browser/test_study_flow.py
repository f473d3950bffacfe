"""A whole study in real Chromium: a researcher trains two digits students and creates a study of the
digits teacher against them, two raters rate it at /rate with the keyboard, and the researcher's results show
teacher-anchored ratings with intervals and rater diagnostics; the exported votes load in pandas."""

from __future__ import annotations

import io
import sqlite3

import pandas as pd
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Studio, shoot
from tests.browser.helpers import fill, queued_id, run_row, start_run, tab

WAIT_MS = 300_000
USERS = "alice:alice-pw:researcher,rob:rob-pw:rater,rae:rae-pw:rater"
QUOTA = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studio = Studio(tmp_path_factory.mktemp("study") / "data", env={"STUDIO_USERS": USERS}).wait()
    yield studio
    studio.stop()


def sign_in(browser, url: str, user: str, password: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    return context, page


def rate_with_keys(page, keys: list[tuple[str, str]]) -> None:
    """Answer each pair with a quality key and an alignment key, then Enter; the counter moves on each time."""
    progress = page.locator("#rate-progress")
    for done, (quality, alignment) in enumerate(keys, start=1):
        expect(page.locator("#rate-left img")).to_be_visible()
        expect(page.locator("#rate-quality input:checked")).to_have_count(0)  # the new pair's blank answers arrived
        for _attempt in range(3):  # a key pressed while the page re-renders can be cleared by it: press again
            page.locator("body").press(quality)
            page.locator("body").press(alignment)
            if page.locator("#rate-submit").is_enabled():
                break
            page.wait_for_timeout(500)
        expect(page.locator("#rate-submit")).to_be_enabled()
        page.locator("body").press("Enter")
        expect(progress).to_contain_text(f"{done} of {QUOTA}")


def test_a_study_of_the_digits_teacher_against_two_students(browser, server):
    alice, page = sign_in(browser, server.url, "alice", "alice-pw")
    # 1. Two digits students, trained from the form (a few iterations: the flow, not their quality, is tested).
    ids = []
    for method in ("dmd2", "diff-instruct"):
        start_run(page, teacher="digits", method=method, steps="1", iterations="8", preset="digits")
        ids.append(queued_id(page, method))
    for run_id in ids:
        expect(run_row(page, run_id)).to_contain_text("succeeded", timeout=WAIT_MS)

    # 2. The study: teacher at 50 steps (the anchor) against both students; images by sample jobs, then the pool.
    study = tab(page, "Study")
    fill(study, "Study name", "Digits round 1")
    study.get_by_label("Teacher", exact=True).click()
    page.get_by_role("option", name="digits", exact=True).click()
    study.get_by_role("button", name="Refresh students").click()
    for run_id, method in zip(ids, ("dmd2", "diff-instruct")):
        study.get_by_label(f"run {run_id} · {method}-1 · succeeded").check()
    fill(study, "Classes", "0-2")
    fill(study, "Seeds", "0-3")
    fill(study, "Pairs per model pair", "4")
    fill(study, "Repeat %", "0")
    fill(study, "Quota per rater", str(QUOTA))
    study.get_by_role("button", name="Create study").click()
    expect(page.locator("#st-create-status")).to_contain_text("Study 1 created with 3 variants")
    expect(page.locator("#st-summary")).to_contain_text("all images ready", timeout=WAIT_MS)
    study.get_by_role("button", name="Build pool and open").click()
    expect(page.locator("#st-action")).to_contain_text("Study 1 is open: 12 pairs")

    # 3. Two raters rate at /rate with the keyboard only.
    for rater, keys in (("rob", [("1", "q"), ("2", "w"), ("1", "e"), ("1", "q"), ("3", "q")]),
                        ("rae", [("1", "q"), ("1", "w"), ("2", "q"), ("4", "r"), ("1", "q")])):
        context, rate = sign_in(browser, server.url + "rate/", rater, f"{rater}-pw")
        expect(rate.locator("#rate-prompt")).to_contain_text("digit")
        rate_with_keys(rate, keys)
        expect(rate.locator("#rate-prompt")).to_contain_text(f"All done: you answered {QUOTA} of {QUOTA} pairs")
        context.close()

    # 4. Results: the teacher anchors at 1000, every variant has an interval, both raters are diagnosed.
    study.get_by_label("Bootstrap rounds").fill("200")
    study.get_by_role("button", name="Compute results").click()
    ratings = page.locator("#st-ratings")
    expect(ratings).to_contain_text("teacher digits @ 50 steps", timeout=60_000)
    expect(ratings).to_contain_text("1000")
    for run_id in ids:
        expect(ratings).to_contain_text(f"run {run_id} @ step 8")
    expect(page.locator("#st-raters")).to_contain_text("rob")
    expect(page.locator("#st-raters")).to_contain_text("rae")
    shoot(page, "study")

    # 5. Export: the CSV a researcher downloads loads in pandas, one row per vote on normal pairs.
    study.get_by_role("button", name="Export votes").click()
    expect(page.locator("#st-files")).to_contain_text("study-1-quality")
    link = page.locator("#st-files tr").filter(has_text="study-1-quality").locator("a").first
    with page.expect_download() as download:
        link.click()
    frame = pd.read_csv(io.BytesIO(open(download.value.path(), "rb").read()))
    assert {"model_a", "model_b", "winner", "judge", "tstamp", "criterion"} <= set(frame.columns)
    with sqlite3.connect(server.data_dir / "studio.db") as db:  # every live quality vote on a normal pair
        (expected,) = db.execute("SELECT COUNT(*) FROM votes WHERE criterion = 'quality' AND NOT is_gold "
                                 "AND retracted_at IS NULL").fetchone()
    assert len(frame) == expected and 0 < expected <= 2 * QUOTA
    assert set(frame["criterion"]) == {"quality"}
    alice.close()
