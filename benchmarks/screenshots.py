"""The README's screenshots: a real `distill-studio up`, driven in Chromium through the flow a new user follows.

Trains a digits dmd2 student from the form, compares it with the teacher at 1, 2, 4 and 50 steps on the same seeds,
evaluates both onto the leaderboard, and saves one PNG per tab to benchmarks/results/screenshots/.

    python benchmarks/screenshots.py [--iterations 600] [--n 1000]
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
from tests.browser.helpers import choose, choose_many, fill, queued_id, run_row, start_run, tab  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "screenshots"
WAIT_MS = 60 * 60 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--n", type=int, default=1000, help="samples per model for the leaderboard's FID")
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
    start_run(page, teacher="digits", method="dmd2", steps="1", iterations=str(iterations), preset="digits")
    run_id = queued_id(page)
    expect(run_row(page, run_id)).to_contain_text("succeeded", timeout=WAIT_MS)
    page.wait_for_timeout(4000)  # one more tick: the final previews and curves
    shoot(page, "runs")

    compare = tab(page, "Compare")
    choose(page, compare, "Teacher", "digits")
    compare.get_by_role("button", name="Refresh students").click()
    compare.get_by_label(f"run {run_id} · dmd2-1 · succeeded").check()
    fill(compare, "Teacher steps", "1,2,4,50")
    choose(page, compare, "Class", "3")
    fill(compare, "Seeds", "0-7")
    compare.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#cmp-status")).to_contain_text("all images ready", timeout=WAIT_MS)
    shoot(page, "compare")
    page.locator("#cmp-grid img").nth(4 * 8 + 2).click()
    expect(page.locator("#cmp-slider img")).to_have_count(2)
    shoot(page, "compare-slider")

    board = tab(page, "Leaderboard")
    choose_many(page, board, "Models", [f"run {run_id} · dmd2-1 of digits", "teacher digits @ 1 steps",
                                        "teacher digits @ 4 steps", "teacher digits @ 50 steps"])
    for metric in ("kid", "precision"):
        board.get_by_label(metric, exact=True).uncheck()
    board.get_by_label("accuracy", exact=True).check()
    fill(board, "Samples per model", str(n))
    board.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#lb-status")).to_contain_text("queued")
    eval_id = int(re.search(r"run (\d+) queued", page.locator("#lb-status").inner_text())[1])
    tab(page, "Runs")
    expect(run_row(page, eval_id)).to_contain_text("succeeded", timeout=WAIT_MS)
    tab(page, "Leaderboard")
    page.wait_for_timeout(4000)
    shoot(page, "leaderboard")

    teachers = tab(page, "Teachers")
    choose(page, teachers, "Teacher", "digits")
    expect(page.locator("#t-status")).to_contain_text("seeds 0-15", timeout=WAIT_MS)
    shoot(page, "teachers")


if __name__ == "__main__":
    main()
