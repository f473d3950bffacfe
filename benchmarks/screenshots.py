"""The README's screenshots: a real `distill-studio up`, driven in Chromium through the flow a new user follows.

Trains a 1-step diff-instruct student of the built-in text-to-image teacher `shapes` from the form, compares it with
the teacher at 1, 4 and 50 guided steps on three prompts at two seeds each, evaluates them onto the leaderboard on
shapes-test (FID and alignment), draws a typed prompt on the Teachers tab, and saves one PNG per tab to
benchmarks/results/screenshots/.

    python benchmarks/screenshots.py [--iterations 200] [--n 200]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser.conftest import CHROMIUM, Studio  # noqa: E402
from tests.browser.helpers import choose, choose_many, fill, pick_students, queued_id, run_row, start_run, tab  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "screenshots"
WAIT_MS = 60 * 60 * 1000


PROMPTS = ["a small red circle on the left, on a white background",
           "a large blue square at the top, on a black background",
           "a large yellow triangle at the bottom and a small green star on the right, on a gray background"]
TRY = "a large green star in the centre, on a white background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--n", type=int, default=200, help="samples per model for the leaderboard (small-sample below "
                                                         "2,000: the screenshot shows the flow, the README's tables "
                                                         "the figures)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        studio = Studio(Path(tmp) / "data", "--no-auth").wait()
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(studio.url)
            shots(page, args.iterations, args.n)
        finally:
            browser.close()
            studio.stop()
    print(f"screenshots in {OUT}")


def shoot(page, name: str) -> None:
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


def shots(page, iterations: int, n: int) -> None:
    start_run(page, teacher="shapes", method="diff-instruct", steps="1", iterations=str(iterations), preset="shapes")
    run_id = queued_id(page)
    expect(run_row(page, run_id)).to_contain_text("succeeded", timeout=WAIT_MS)
    page.wait_for_timeout(4000)  # one more tick: the final previews and curves
    shoot(page, "runs")

    compare = tab(page, "Compare")
    pick_students(page, compare, "shapes", [f"run {run_id} · diff-instruct-1 · succeeded"])
    fill(compare, "Teacher steps", "1,4,50")
    compare.get_by_label("Prompts").fill("\n".join(PROMPTS))
    fill(compare, "Seeds", "0-1")
    compare.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#cmp-status")).to_contain_text("all images ready", timeout=WAIT_MS)
    shoot(page, "compare")
    columns = len(PROMPTS) * 2
    page.locator("#cmp-grid img").nth(columns + 3 * columns + 2).click()  # the student's cell under the 2nd prompt
    expect(page.locator("#cmp-slider img")).to_have_count(2)
    shoot(page, "compare-slider")

    board = tab(page, "Leaderboard")
    choose_many(page, board, "Models", [f"run {run_id} · diff-instruct-1 of shapes", "teacher shapes @ 1 steps",
                                        "teacher shapes @ 4 steps", "teacher shapes @ 50 steps"])
    for metric in ("kid", "precision"):
        board.get_by_label(metric, exact=True).uncheck()
    board.get_by_label("alignment", exact=True).check()
    fill(board, "Samples per model", str(n))
    fill(board, "Teacher guidance", "4")
    board.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#lb-status")).to_contain_text("queued")
    eval_ids = [int(i) for i in re.findall(r"run (\d+)", page.locator("#lb-status").inner_text())]
    tab(page, "Runs")
    for eval_id in eval_ids:
        expect(run_row(page, eval_id)).to_contain_text("succeeded", timeout=WAIT_MS)
    tab(page, "Leaderboard")
    page.wait_for_timeout(4000)
    shoot(page, "leaderboard")

    teachers = tab(page, "Teachers")
    choose(page, teachers, "Teacher", "shapes")
    expect(page.locator("#t-status")).to_contain_text("4 fixed prompts", timeout=WAIT_MS)
    fill(teachers, "Prompt", TRY)
    teachers.get_by_role("button", name="Draw").click()
    expect(page.locator("#t-try-status")).to_contain_text("2 models", timeout=WAIT_MS)
    shoot(page, "teachers")


if __name__ == "__main__":
    main()
