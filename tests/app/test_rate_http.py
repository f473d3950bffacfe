"""The rating page over real HTTP against a live `distill-studio up` (SQLite and PostgreSQL): who may sign in where, what
a rater may fetch, another rater's token, and 20 simultaneous raters x 50 pairs losing and duplicating nothing.

Raters drive Gradio's HTTP API of the page (POST /rate/gradio_api/run/NAME: its events skip the queue) with their own
login cookie, as the browser's buttons do."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.rate.blind import blind_copy
from storage.db import make_engine, make_session_factory, session_scope
from storage.migrate import upgrade
from storage.models import Assignment, Vote
from tests.browser.conftest import Studio
from tests.rate_client import call_rate_api
from tests.storage.test_votes import make_study

RATERS = [f"rater{i:02d}" for i in range(20)]  # the concurrency test's; ann and bob serve the other tests
USERS = ",".join([f"{r}:pw-{r}:rater" for r in [*RATERS, "ann", "bob"]] + ["res:pw-res:researcher"])
PER_RATER = 50
OUTPUTS = ("token", "left", "right", "prompt", "quality", "alignment", "submit", "progress", "note", "box")


class Rater:
    """One rater's signed-in HTTP session on the page's API."""

    def __init__(self, url: str, name: str, password: str | None = None):
        self.name = name
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=60)
        reply = self.http.post("/rate/login", data={"username": name, "password": password or f"pw-{name}"})
        if reply.status_code != 200:
            raise PermissionError(f"{name}: login refused ({reply.status_code})")

    def call(self, api: str, *data) -> dict:
        return dict(zip(OUTPUTS, call_rate_api(self.http, api, *data), strict=False))

    def load(self) -> dict:
        return self.call("rate_pick", "Study A")

    def submit(self, token: str, quality: str = "left", alignment: str = "tie", ms: float | None = 800.0) -> dict:
        return self.call("rate_submit", "Study A", token, quality, alignment, ms, False)

    def close(self) -> None:
        self.http.close()


def seed(url: str, data_dir: Path, **config) -> dict:
    """Migrate the database and create 'Study A' with real blind PNGs: 12 conditions x 6 seeds, two students."""
    from PIL import Image

    upgrade(url)
    engine = make_engine(url)
    src = data_dir.parent / "src"
    src.mkdir(exist_ok=True)
    images = []
    for i in range(8):
        path = src / f"img{i}.png"
        Image.new("RGB", (8, 8), (30 * i, 10, 200 - 20 * i)).save(path)
        images.append(path)
    counter = iter(range(10**6))
    with session_scope(make_session_factory(engine)) as s:
        ids = make_study(s, name="Study A", conditions=tuple(str(c) for c in range(12)), seeds=tuple(range(6)),
                         config={"quota": PER_RATER, **config},
                         image=lambda label, condition: blind_copy(images[next(counter) % len(images)], data_dir))
    engine.dispose()
    return ids


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request, tmp_path_factory) -> Iterator[tuple[Studio, str, dict]]:
    """A live server on a seeded database of either backend: (server, database URL, study ids)."""
    data = tmp_path_factory.mktemp(f"rate-{request.param}") / "data"
    data.mkdir()
    if request.param == "sqlite":
        url, env = f"sqlite:///{data / 'studio.db'}", {}
    else:
        url = request.getfixturevalue("postgres").create()  # dropped at the end of the session
        env = {"STUDIO_DATABASE_URL": url}
    ids = seed(url, data)
    studio = Studio(data, "--no-worker", env={"STUDIO_USERS": USERS, **env}).wait()
    yield studio, url, ids
    studio.stop()


def count(url: str, *where, model=Vote) -> int:
    engine = make_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        engine.dispose()


def test_sign_in_rules_and_what_a_rater_may_fetch(served):
    studio, url, _ = served
    base = studio.url.rstrip("/")
    with httpx.Client(base_url=base, timeout=30) as anon:
        assert anon.get("/rate/config").status_code == 401
        assert anon.post("/rate/gradio_api/run/rate_pick", json={"data": ["Study A"]}).status_code == 401
        assert anon.post("/rate/gradio_api/call/rate_pick", json={"data": ["Study A"]}).status_code == 401
        assert anon.post("/rate/login", data={"username": "res", "password": "pw-res"}).status_code != 200
        assert anon.post("/login", data={"username": "ann", "password": "pw-ann"}).status_code != 200
        assert anon.post("/rate/login", data={"username": "ann", "password": "wrong"}).status_code != 200
    ann = Rater(base, "ann")
    try:
        assert ann.http.get("/config").status_code == 401  # signed in at /rate is not signed in at the studio
        page = ann.http.get("/rate/")
        assert page.status_code == 200
        shown = ann.load()
        assert shown["progress"] == f"**0 of {PER_RATER}**" and shown["prompt"].startswith("### Which image is better?")
        image = shown["left"]["path"]
        assert ann.http.get(f"/rate/gradio_api/file={image}").status_code == 200
        for path in (studio.data_dir / "studio.db", studio.data_dir / "blind", Path("/etc/passwd")):
            assert ann.http.get(f"/rate/gradio_api/file={path}").status_code in (403, 404)
        info = ann.http.get("/rate/gradio_api/info")
        assert info.status_code != 200 or "rate_submit" not in info.text  # no API page
    finally:
        ann.close()


def test_the_readme_address_leads_to_the_page_signed_in_or_not(served):
    """Raters are told to open /rate; the page lives at /rate/ (a mount), and Gradio's logout also sends them to /rate."""
    studio, _, _ = served
    base = studio.url.rstrip("/")
    with httpx.Client(base_url=base, timeout=30) as anon:
        moved = anon.get("/rate?lang=en&x=1")
        assert moved.status_code == 307 and moved.headers["location"] == "/rate/?lang=en&x=1"
        assert anon.head("/rate").status_code == 307
        page = anon.get("/rate", follow_redirects=True)
        assert page.status_code == 200 and page.url.path == "/rate/" and "<html" in page.text.lower()
        assert anon.get("/rate/config").status_code == 401  # the redirect admits nobody: the page still asks to sign in
    bob = Rater(base, "bob")
    try:
        page = bob.http.get("/rate", follow_redirects=True)
        assert page.status_code == 200 and page.url.path == "/rate/"
        assert bob.http.get("/rate/config").status_code == 200
        assert bob.load()["prompt"].startswith("### Which image is better?")
        out = bob.http.get("/rate/logout", follow_redirects=True)  # Gradio redirects to its root, /rate
        assert out.status_code == 200 and out.url.path == "/rate/"
        assert bob.http.get("/rate/config").status_code == 401
    finally:
        bob.close()


def test_another_raters_token_is_refused(served):
    studio, url, _ = served
    ann, bob = Rater(studio.url, "ann"), Rater(studio.url, "bob")
    try:
        token = ann.load()["token"]
        before = count(url)
        stolen = bob.submit(token)
        assert "not assigned to you" in stolen["note"] and stolen["token"] != token
        assert count(url) == before
        assert count(url, Assignment.token == token, Assignment.completed_at.is_(None), model=Assignment) == 1
        done = ann.submit(token)
        assert done["note"].startswith("Saved") and count(url) == before + 2
        again = ann.submit(token)  # a retried request: no new votes, not an error
        assert again["note"].startswith("Saved") and count(url) == before + 2
    finally:
        ann.close()
        bob.close()


def test_twenty_raters_fifty_pairs_each_lose_and_duplicate_nothing(served):
    studio, url, ids = served
    errors, finals, tokens = [], {}, {}
    raters = RATERS
    start = threading.Barrier(len(raters))

    def rate(name: str) -> None:
        try:
            rater = Rater(studio.url, name)
            start.wait(60)
            shown = rater.load()
            seen = []
            while shown["token"]:
                seen.append(shown["token"])
                shown = rater.submit(shown["token"], "left" if len(seen) % 2 else "right", "tie")
            finals[name], tokens[name] = shown, seen
            rater.close()
        except Exception as exc:  # noqa: BLE001 (collected and asserted below)
            errors.append(f"{name}: {exc!r}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=rate, args=(name,)) for name in raters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    elapsed = time.monotonic() - t0
    assert errors == []
    print(f"{len(raters)} raters x {PER_RATER} pairs in {elapsed:.1f} s")
    for name in raters:
        assert len(tokens[name]) == PER_RATER == len(set(tokens[name]))
        assert f"{PER_RATER} of {PER_RATER}" in finals[name]["prompt"]
    # the database: exactly two live votes per showing, none duplicated, none lost
    live = (Vote.rater.in_(raters), Vote.retracted_at.is_(None))
    assert count(url, *live) == len(raters) * PER_RATER * 2
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as s:
        per_key = s.execute(select(Vote.rater, Vote.pair_id, Vote.criterion, func.count()).where(*live)
                            .group_by(Vote.rater, Vote.pair_id, Vote.criterion).having(func.count() > 1)).all()
        per_rater = dict(s.execute(select(Vote.rater, func.count()).where(*live).group_by(Vote.rater)).all())
        open_left = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.rater.in_(raters),
                                                                                  Assignment.completed_at.is_(None)))
    engine.dispose()
    assert per_key == [] and set(per_rater.values()) == {PER_RATER * 2} and open_left == 0
