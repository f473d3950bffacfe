"""The rating page in Chromium against a live `distill-studio up` with rater accounts, opened at `/rate` as the README
says.

Blinding (docs/study.md#blinding): a rater rates a few pairs while every response body (HTML, JS config, JSON, the event
stream), every URL and every served PNG's chunks are captured; none may carry a variant label, model string, run id,
teacher name or checkpoint step. Keyboard (§2.4): pairs are rated with 1..4, Q..R and Enter only, one is undone with U,
and the counter follows. Size: a 16x16 sample fills its box, crisp, the same on both sides, in every view."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect
from sqlalchemy import select

from app.rate.blind import blind_copy
from storage.db import make_engine, make_session_factory, session_scope
from storage.migrate import upgrade
from storage.models import Vote
from tests.browser.conftest import Studio, shoot
from tests.storage.test_votes import make_study

pytestmark = pytest.mark.browser

TEACHER = "secretteacherxyz"
VARIANTS = [
    {"model": f"teacher:{TEACHER}", "steps": 40, "checkpoint": 0, "label": "teacher-secret-label", "is_teacher": True},
    {"model": "run:987654", "steps": 4, "checkpoint": 424242, "label": "dmd2-secret-label"},
    {"model": "run:876543", "steps": 1, "checkpoint": 313131, "label": "mmd-secret-label"},
]
SECRETS = [TEACHER, "secret-label", "987654", "876543", "424242", "313131", "seed4242"]
USERS = "rita:rita-pw:rater,kim:kim-pw:rater,lea:lea-pw:rater,res:res-pw:researcher"
README_ADDRESS = "rate"  # "Raters sign in at `/rate`"; the page itself is served at /rate/
# Event streams are read by the page through fetch and may stay open past the test; tee them as the page reads them.
TEE_STREAMS = """
window.__streams = [];
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await pageFetch(...args);
  if ((response.headers.get("content-type") || "").includes("text/event-stream")) {
    const entry = {url: response.url, text: ""};
    window.__streams.push(entry);
    const reader = response.clone().body.getReader();
    const decoder = new TextDecoder();
    (async () => {
      for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        entry.text += decoder.decode(value, {stream: true});
      }
    })();
  }
  return response;
};
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}


def source_png(folder: Path, label: str, condition: str) -> Path:
    """A sample as a job writes it (one colour, 16x16 like a digit), with a telling name and text and EXIF metadata naming
    its model."""
    from PIL import PngImagePlugin

    path = folder / f"{label}_{TEACHER}_seed4242_{condition}.png"
    if not path.exists():
        shade = sum(map(ord, label + condition)) % 200
        info = PngImagePlugin.PngInfo()
        info.add_text("model", f"run:987654 {label} step 424242")
        exif = Image.Exif()
        exif[0x010E] = f"{TEACHER} {label}"  # ImageDescription
        Image.new("RGB", (16, 16), (shade, 40, 200 - shade)).save(path, pnginfo=info, exif=exif)
    return path


@pytest.fixture(scope="module")
def rate_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("rate") / "data"
    data.mkdir()
    sources = data.parent / "samples"
    sources.mkdir()
    url = f"sqlite:///{data / 'studio.db'}"
    upgrade(url)
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as s:
        make_study(s, name="Study A", variants=VARIANTS, teacher=TEACHER, conditions=("3", "5", "8"), seeds=(1, 2),
                   config={"quota": 5, "undo_s": 30},
                   image=lambda label, condition: blind_copy(source_png(sources, label, condition), data))
    studio = Studio(data, "--no-worker", env={"STUDIO_USERS": USERS}).wait()
    studio.engine = engine
    yield studio
    studio.stop()
    engine.dispose()


def sign_in(browser, studio, user: str, password: str):
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(studio.url + README_ADDRESS)
    expect(page).to_have_url(re.compile(r"/rate/$"))
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#rate-progress")).to_contain_text(" of 5")
    return context, page


def answer_and_submit(page, quality: str, alignment: str) -> None:
    """By mouse, after both images have loaded."""
    page.locator("#rate-quality").get_by_label(quality, exact=True).check()
    page.locator("#rate-alignment").get_by_label(alignment, exact=True).check()
    expect(page.locator("#rate-submit")).to_be_enabled()
    page.locator("#rate-submit").click()


def images_loaded(page) -> None:
    """Both images are decoded: the page refuses a Submit before that (it could not time the vote)."""
    page.wait_for_function("() => { const imgs = document.querySelectorAll('#rate-left img, #rate-right img');"
                           " return imgs.length === 2 && [...imgs].every((i) => i.complete && i.naturalWidth > 0); }")


def png_chunks(body: bytes) -> list[bytes]:
    assert body.startswith(PNG_MAGIC)
    chunks, i = [], len(PNG_MAGIC)
    while i < len(body):
        length, kind = struct.unpack(">I4s", body[i:i + 8])
        chunks.append(kind)
        i += 12 + length
    return chunks


def test_nothing_identifying_a_model_reaches_the_browser(browser, rate_server):
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    captured: list[tuple[str, str, bytes]] = []  # (url, content type, body)
    urls: list[str] = []

    def finished(request):
        response = request.response()
        if response is not None:
            captured.append((request.url, response.headers.get("content-type", ""), response.body()))

    context.on("request", lambda r: urls.append(r.url))
    context.on("requestfinished", finished)
    context.add_init_script(TEE_STREAMS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(rate_server.url + README_ADDRESS)
    page.get_by_label("username").fill("rita")
    page.get_by_label("password").fill("rita-pw")
    page.get_by_role("button", name="Login").click()
    counter = page.locator("#rate-progress")
    expect(counter).to_contain_text("0 of 5")
    html = [page.content()]
    for n, (quality, alignment) in enumerate([("Left", "Tie"), ("Right", "Both bad"), ("Tie", "Left")], 1):
        images_loaded(page)
        expect(page.locator("#rate-prompt")).to_contain_text("Which image is better?")
        answer_and_submit(page, quality, alignment)
        expect(counter).to_contain_text(f"{n} of 5")
        html.append(page.content())
    page.locator("#rate-undo").click()
    expect(counter).to_contain_text("2 of 5")
    html.append(page.content())
    shoot(page, "rate-page")
    streams = page.evaluate("window.__streams")  # the event streams as the page's own code read them
    context.close()

    # every URL, HTML snapshot and response body, scanned for any identifying string
    texts = [("url", u) for u in urls] + [("html", h) for h in html]
    texts += [(url, body.decode("latin-1")) for url, _, body in captured]
    texts += [(stream["url"], stream["text"]) for stream in streams]
    leaks = [(where[:120], secret) for where, text in texts for secret in SECRETS if secret.lower() in text.lower()]
    assert leaks == []
    # the scan saw what the rater saw: the page's events skip the queue, so each result (load, three submits, undo)
    # is the JSON reply of a POST to /rate/gradio_api/run/, with its condition text
    replies = [body.decode() for url, _, body in captured if "/rate/gradio_api/run/" in url]
    assert sum("the digit" in reply for reply in replies) >= 5
    # the captions are only "Left image" and "Right image", and image URLs are random names
    assert "Left image" in html[1] and "Right image" in html[1]
    pngs = [(url, body) for url, kind, body in captured if body.startswith(PNG_MAGIC)]
    assert len(pngs) >= 6
    for url, body in pngs:
        assert set(png_chunks(body)) <= PIXEL_CHUNKS, url
        assert re.search(r"/[0-9a-f]{32}\.png$", url), url


def test_a_rater_rates_by_keyboard_and_undoes_one(browser, rate_server):
    context, page = sign_in(browser, rate_server, "kim", "kim-pw")
    counter = page.locator("#rate-progress")
    expect(page.locator("#rate-keys")).to_contain_text("Enter")
    submit = page.locator("#rate-submit")
    for n, (q, a) in enumerate([("1", "q"), ("2", "w"), ("3", "r")], 1):
        images_loaded(page)
        expect(submit).to_be_disabled()
        page.keyboard.press(q)
        page.keyboard.press(a)
        expect(submit).to_be_enabled()
        page.keyboard.press("Enter")
        expect(counter).to_contain_text(f"{n} of 5")
    expect(page.locator("#rate-note")).to_contain_text("Saved")
    page.keyboard.press("u")
    expect(counter).to_contain_text("2 of 5")
    expect(page.locator("#rate-note")).to_contain_text("Undone")
    images_loaded(page)
    page.keyboard.press("4")
    page.keyboard.press("e")
    expect(submit).to_be_enabled()
    page.keyboard.press("Enter")
    expect(counter).to_contain_text("3 of 5")
    for n in (4, 5):
        images_loaded(page)
        page.keyboard.press("1")
        page.keyboard.press("q")
        expect(submit).to_be_enabled()
        page.keyboard.press("Enter")
        expect(counter).to_contain_text(f"{n} of 5")
    expect(page.locator("#rate-prompt")).to_contain_text("All done")
    context.close()

    with session_scope(make_session_factory(rate_server.engine)) as s:
        votes = s.scalars(select(Vote).where(Vote.rater == "kim").order_by(Vote.voted_at, Vote.criterion)).all()
        live = [(v.criterion, v.choice) for v in votes if v.retracted_at is None]
        retracted = [(v.criterion, v.choice) for v in votes if v.retracted_at is not None]
        timed = [v.client_ms_after_load for v in votes if v.retracted_at is None]
    assert retracted == [("alignment", "both_bad"), ("quality", "tie")]
    assert live[:4] == [("alignment", "left"), ("quality", "left"), ("alignment", "right"), ("quality", "right")]
    assert live[4:6] == [("alignment", "tie"), ("quality", "both_bad")] and len(live) == 10
    assert all(ms is not None and 0 <= ms < 60_000 for ms in timed)  # the browser timed every vote


SIDES = ("left", "right")
# The images' boxes unchanged over three polls (Gradio's fullscreen view grows in a transition): the layout a rater sees.
SETTLED = """() => {
  const now = [...document.querySelectorAll('#rate-left img, #rate-right img')]
    .map((img) => JSON.stringify(img.getBoundingClientRect())).join();
  window.__steady = now === window.__rects ? (window.__steady || 0) + 1 : 0;
  window.__rects = now;
  return window.__steady >= 3;
}"""
COVERS_VIEWPORT = """(selector) => { const r = document.querySelector(selector).getBoundingClientRect();
  return r.width >= 0.95 * innerWidth && r.height >= 0.95 * innerHeight; }"""


def settle(page) -> None:
    page.wait_for_function(SETTLED, polling=150)


def painted(box) -> tuple[int, int]:
    """Width and height in CSS px of the sample as painted in `box`, read off a screenshot (samples are one colour), so
    what a rater sees whatever the CSS says."""
    shot = np.asarray(Image.open(io.BytesIO(box.screenshot())).convert("RGB")).astype(int)
    colour = shot[shot.shape[0] // 2, shot.shape[1] // 2]  # the sample is centred in its box
    ys, xs = np.nonzero(np.abs(shot - colour).max(axis=2) <= 8)
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def filled(page, sides, view: str) -> list[tuple[int, int]]:
    """The painted sizes of `sides`, each checked to be square like its sample, to fill at least 90 % of its box's
    smaller side and to be scaled nearest-neighbour."""
    sizes = []
    for side in sides:
        box = page.locator(f"#rate-{side} .image-container")
        bound = box.bounding_box()
        width, height = painted(box)
        assert abs(width - height) <= 1, f"{view}: the {side} image is {width}x{height}, its sample is square"
        assert min(width, height) >= 0.9 * min(bound["width"], bound["height"]), f"{view}: {side} {width} px in {bound}"
        sizes.append((width, height))
    rendering = page.evaluate("() => [...document.querySelectorAll('#rate-left img, #rate-right img')]"
                              ".map((img) => getComputedStyle(img).imageRendering)")
    assert rendering == ["pixelated", "pixelated"], view
    return sizes


def same(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] - b[0]) <= 1 and abs(a[1] - b[1]) <= 1


def test_both_images_fill_their_boxes_crisply_and_alike_in_every_view(browser, rate_server):
    """16x16 samples drawn at 16 px cannot be judged: each is scaled up to fill its box, the two alike, on the page, in
    the `F` view of both and in the corner button's view of one; a vote after an enlarged view records it."""
    context, page = sign_in(browser, rate_server, "lea", "lea-pw")
    images_loaded(page)
    settle(page)
    on_page = filled(page, SIDES, "page")
    assert same(*on_page) and on_page[0][0] >= 300
    shoot(page, "rate-page-images")

    page.keyboard.press("f")
    page.wait_for_function("() => document.fullscreenElement?.id === 'rate-images'")
    settle(page)
    both = filled(page, SIDES, "F view")
    assert same(*both) and both[0][0] > on_page[0][0]
    shoot(page, "rate-page-fullscreen")
    page.keyboard.press("f")
    page.wait_for_function("() => !document.fullscreenElement")

    alone = []
    for side in SIDES:
        page.locator(f"#rate-{side} .icon-button").click()
        page.wait_for_function(COVERS_VIEWPORT, arg=f"#rate-{side} .image-container")
        settle(page)
        alone += filled(page, [side], f"corner view of the {side} image")
        page.keyboard.press("Escape")
        page.wait_for_function(f"() => !({COVERS_VIEWPORT})('#rate-{side} .image-container')")
        settle(page)
    assert same(*alone) and alone[0][0] > both[0][0]

    counter = page.locator("#rate-progress")
    for n in (1, 2):  # the first pair was seen enlarged, the second not
        images_loaded(page)
        page.keyboard.press("1")
        page.keyboard.press("q")
        expect(page.locator("#rate-submit")).to_be_enabled()
        page.keyboard.press("Enter")
        expect(counter).to_contain_text(f"{n} of 5")
    page.get_by_role("link", name="log out").click()  # Gradio's logout sends raters to /rate: back to the sign-in form
    expect(page.get_by_label("username")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/rate/$"))
    context.close()

    with session_scope(make_session_factory(rate_server.engine)) as s:
        votes = s.scalars(select(Vote).where(Vote.rater == "lea").order_by(Vote.voted_at, Vote.criterion)).all()
        assert [v.fullscreen_used for v in votes] == [True, True, False, False]
