"""Accounts in the browser: the studio asks for a login, a researcher gets every tab, a rater cannot sign in (raters
use /rate), and the login refuses a wrong password. The server is a second live `distill-studio up` with accounts configured."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Studio

TABS = ("Runs", "Teachers", "Compare", "Leaderboard", "Study")


@pytest.fixture(scope="module")
def studio_with_accounts(tmp_path_factory):
    server = Studio(tmp_path_factory.mktemp("accounts") / "data", "--no-worker",
                    env={"STUDIO_USERS": "alice:alice-pw:researcher,rob:rob-pw:rater"}).wait()
    yield server
    server.stop()


def login(browser, studio, user: str, password: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(studio.url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    return context, page


def test_a_researcher_sees_every_tab(browser, studio_with_accounts):
    context, page = login(browser, studio_with_accounts, "alice", "alice-pw")
    expect(page.locator("#header")).to_contain_text("signed in as alice")
    for name in TABS:
        expect(page.get_by_role("tab", name=name)).to_be_visible()
    expect(page.get_by_label("Teacher", exact=True).first).to_be_visible()
    context.close()


def test_a_rater_cannot_sign_in_to_the_studio(browser, studio_with_accounts):
    """The studio's page config carries run and model names, so a rater's login is refused before any of it loads."""
    context, page = login(browser, studio_with_accounts, "rob", "rob-pw")
    expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
    expect(page.get_by_text("Raters rate at /rate")).to_be_visible()
    for name in TABS:
        expect(page.get_by_role("tab", name=name)).to_have_count(0)
    context.close()


def test_a_wrong_password_is_refused(browser, studio_with_accounts):
    context, page = login(browser, studio_with_accounts, "alice", "nope")
    expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
    expect(page.get_by_role("tab", name="Runs")).to_have_count(0)
    context.close()
