"""Driving the studio's Gradio widgets from Playwright: tabs, dropdowns, fields, the New-run form, the runs table.
Shared by the browser tests and benchmarks/screenshots.py."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def tab(page, name: str):
    """Open a tab; its panel, to which lookups are scoped (every tab has its own "Teacher" field)."""
    page.get_by_role("tab", name=name).click()
    return page.locator(f"#tab-{name.lower()}")


def choose(page, scope, label: str, value: str) -> None:
    """Pick `value` in the Gradio dropdown labelled `label`."""
    box = scope.get_by_label(label, exact=True)
    box.click()
    page.get_by_role("option", name=value, exact=True).click()
    expect(box).to_have_value(value)


def fill(scope, label: str, value: str) -> None:
    """Type into the field labelled `label` (a textbox's accessible name also holds its help text)."""
    field = scope.get_by_label(label, exact=True)
    if not field.count():
        field = scope.get_by_label(label)
    field.fill(value)
    field.press("Tab")


def start_run(page, *, method: str, steps: str, iterations: str, preset: str = "toy2d", teacher: str = "toy2d-ring",
              knobs: dict | None = None):
    runs = tab(page, "Runs")
    choose(page, runs, "Teacher", teacher)
    choose(page, runs, "Method", method)
    # The form resets the steps to the method's default and names the method in their hint: wait for that first.
    expect(runs.locator("#new-steps")).to_contain_text(f"{method}: ")
    fill(runs, "Student steps", steps)
    choose(page, runs, "Preset", preset)
    fill(runs, "Iterations", iterations)
    if knobs:
        accordion = runs.locator("#knobs")
        if not accordion.get_by_label(next(iter(knobs)), exact=True).is_visible():
            accordion.get_by_text("Method knobs").click()
        for name, value in knobs.items():
            fill(accordion, name, value)
    runs.get_by_role("button", name="Start run").click()


def pick_students(page, scope, teacher: str, students: list[str]) -> None:
    """On Compare or Study: choose the teacher, list its students afresh and tick each (by its label,
    "run ID · METHOD-STEPS · STATUS")."""
    choose(page, scope, "Teacher", teacher)
    scope.get_by_role("button", name="Refresh students").click()
    for label in students:
        scope.get_by_label(label).check()


def run_row(page, run_id: int):
    """The runs table's row of `run_id` (its first cell is the id)."""
    return page.locator("#runs-table [role=row]").filter(has_text=re.compile(rf"^\s*{run_id}\s"))


def queued_id(page, method: str = "") -> int:
    """The id in the form's "Run N queued: METHOD ..." line (pass the method when an older line may still show)."""
    status = page.locator("#form-status")
    expect(status).to_contain_text(f"queued: {method}" if method else "queued")
    return int(re.search(r"Run (\d+) queued", status.inner_text())[1])


def choose_many(page, scope, label: str, values: list[str]) -> None:
    """Pick several options of a multiselect dropdown (its list stays open between picks and covers the field)."""
    scope.get_by_label(label, exact=True).click()
    for value in values:
        page.get_by_role("option", name=value, exact=True).click()
    page.keyboard.press("Escape")
