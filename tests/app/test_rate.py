"""The rating page's pieces without a server: blind copies, the handlers called directly (as Gradio calls them, with a
signed-in request), the page's components and where build_app mounts it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import select

from app.rate.blind import blind_copy, blind_dir
from app.rate.keys import HEAD, KEYS_HELP
from app.rate.page import CSS, build_rate_page, gate, on_load, rater_name, submit, undo
from app.studio.access import Account, Accounts
from app.studio.context import Studio
from storage.db import session_scope
from storage.migrate import upgrade
from storage.models import Vote
from storage.settings import Settings
from tests.storage.test_votes import make_study

ACCOUNTS = Accounts([Account("ann", "ann-pw", "rater"), Account("bob", "bob-pw", "rater"),
                     Account("res", "res-pw", "researcher")])
PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}


def chunks(path: Path) -> set[bytes]:
    data, i, found = path.read_bytes(), 8, set()
    while i < len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        found.add(data[i + 4:i + 8])
        i += 12 + length
    return found


def labelled_png(path: Path, mode: str = "RGB") -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "run:987654 dmd2-secret-label step 424242")
    info.add_itxt("comment", "teacher digits-secret")
    exif = Image.Exif()
    exif[0x010E] = "dmd2-secret-label"
    image = Image.new("RGB", (6, 5), (10, 200, 30))
    image.putpixel((2, 3), (250, 1, 2))
    image.convert(mode).save(path, pnginfo=info, exif=exif, dpi=(300, 300))
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rate-template") / "studio.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def ctx(tmp_path, template):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(template, data / "studio.db")
    studio = Studio.open(Settings(data_dir=data, database_url=f"sqlite:///{data / 'studio.db'}"), ACCOUNTS)
    yield studio
    studio.factory.kw["bind"].dispose()


def seeded(ctx: Studio, **kw) -> dict:
    source = labelled_png(ctx.data_dir.parent / "dmd2-secret-label_seed42.png")
    with session_scope(ctx.factory) as s:
        return make_study(s, name=kw.pop("name", "Study A"), image=lambda label, c: blind_copy(source, ctx.data_dir), **kw)


def prop(update, name: str):
    """A property of a handler's update (a component built as an update, or a dict)."""
    return update[name] if isinstance(update, dict) else getattr(update, name)


def ann(user: str = "ann") -> gr.Request:
    return gr.Request(username=user, session_hash="session-1")


def test_blind_copies_keep_the_pixels_and_drop_names_and_metadata(tmp_path):
    for mode in ("RGB", "RGBA", "L", "P"):
        source = labelled_png(tmp_path / f"teacher_seed42_{mode}.png", mode)
        assert chunks(source) - PIXEL_CHUNKS  # the source does carry text, EXIF and pHYs chunks
        first, second = blind_copy(source, tmp_path / "data"), blind_copy(source, tmp_path / "data")
        assert first != second and re.fullmatch(r"blind/[0-9a-f]{32}\.png", first)
        copy = tmp_path / "data" / first
        assert copy.parent == blind_dir(tmp_path / "data") and chunks(copy) <= PIXEL_CHUNKS
        assert b"secret" not in copy.read_bytes() and b"987654" not in copy.read_bytes()
        with Image.open(source) as a, Image.open(copy) as b:
            assert a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes()
    assert not list((tmp_path / "data" / "blind").glob(".*"))  # no temporary files left behind


def test_a_rater_answers_submits_and_undoes(ctx):
    seeded(ctx, config={"quota": 3})
    picker, who, token, left, right, prompt, quality, alignment, button, counter, note, box = on_load(ctx, ann())
    assert prop(picker, "value") == "Study A" and prop(picker, "visible") is False  # the only open study is picked
    assert "ann" in who and token and prop(box, "visible") is True and counter == "**0 of 3**"
    assert prompt.startswith("### Which image is better?\n**the digit ")
    assert Path(left).parent == blind_dir(ctx.data_dir).resolve() and Path(right).parent == Path(left).parent
    assert prop(gate("left", None), "interactive") is False and prop(gate("left", "tie"), "interactive") is True

    waiting = submit(ctx, "Study A", token, "left", "tie", -1, False, ann())
    assert waiting[8] == "Wait until both images have loaded."
    assert submit(ctx, "Study A", token, "left", None, 100, False, ann())[8] == "Answer both questions first."
    saved = submit(ctx, "Study A", token, "left", "tie", 812, True, ann())
    assert saved[0] != token and saved[7] == "**1 of 3**" and saved[8].startswith("Saved. Press `U` within 10 s")
    with session_scope(ctx.factory) as s:
        votes = s.scalars(select(Vote)).all()
        assert {(v.criterion, v.choice, v.client_ms_after_load, v.fullscreen_used, v.session_hash) for v in votes} == \
            {("quality", "left", 812, True, "session-1"), ("alignment", "tie", 812, True, "session-1")}
        assert {v.app_version for v in votes} != {""}

    undone = undo(ctx, "Study A", ann())
    assert undone[0] == token and undone[7] == "**0 of 3**" and undone[8].startswith("Undone")
    assert undo(ctx, "Study A", ann())[8].startswith("Cannot undo: answer the pair you undid first")
    # bob cannot answer ann's pair; ann's pair stays open for her
    stolen = submit(ctx, "Study A", token, "right", "right", 100, False, ann("bob"))
    assert "not assigned to you" in stolen[8] and stolen[0] != token
    for _ in range(3):
        current = on_load(ctx, ann())[2]
        last = submit(ctx, "Study A", current, "right", "both_bad", 100, False, ann())
    assert last[0] == "" and last[3] == "### All done: you answered 3 of 3 pairs. Thank you!"
    assert prop(last[9], "visible") is False


def test_only_signed_in_raters_get_through(ctx):
    seeded(ctx)
    for request in (None, gr.Request(), ann("res"), ann("nobody")):
        with pytest.raises(PermissionError):
            rater_name(ctx, request)
    with pytest.raises(PermissionError):
        submit(ctx, "Study A", "x", "left", "left", 1, False, ann("res"))


def test_no_open_study_or_a_closed_one(ctx):
    assert on_load(ctx, ann())[5] == "### No study is open for rating right now."
    seeded(ctx, name="First")
    seeded(ctx, name="Second")
    picker, *_rest = on_load(ctx, ann())
    assert [c[0] if isinstance(c, tuple | list) else c for c in prop(picker, "choices")] == ["First", "Second"]
    assert prop(picker, "value") is None and prop(picker, "visible") is True
    assert submit(ctx, "Gone", "t", "left", "left", 1, False, ann())[3].startswith("### ")


def test_an_image_outside_the_blind_directory_is_never_served(ctx):
    from storage.studies import add_pair, set_status

    ids = seeded(ctx, conditions=(), seeds=())
    with session_scope(ctx.factory) as s:
        set_status(session=s, study_id=ids["study"], status="draft")
        add_pair(session=s, study_id=ids["study"], kind="normal", variant_a_id=ids["teacher"],
                 variant_b_id=ids["students"][0], image_a="served/leak.png", image_b="runs/1/x.png", condition="1",
                 condition_text="the digit 1", seed=1)
        set_status(session=s, study_id=ids["study"], status="open")
    with pytest.raises(gr.Error, match="not a blind copy"):
        on_load(ctx, ann())


def test_the_page_has_no_captions_share_buttons_or_names(ctx):
    seeded(ctx)
    demo = build_rate_page(ctx)
    config = demo.get_config_file()
    images = [c["props"] for c in config["components"] if c.get("type") == "image"]
    assert [(p["label"], p["buttons"]) for p in images] == [("Left image", ["fullscreen"]), ("Right image", ["fullscreen"])]
    assert images[0]["height"] == images[1]["height"]
    assert "image-rendering: pixelated" in CSS and "object-fit: contain" in CSS  # tiny samples drawn large, crisp
    text = json.dumps(config)
    for secret in ("secret", "987654", "424242", "run:", "teacher:"):
        assert secret not in text
    assert "Keys:" in KEYS_HELP and "#rate-submit" in HEAD and "#rate-undo" in HEAD


def test_build_app_mounts_rate_before_the_studio_and_not_single_user(ctx):
    from fastapi.testclient import TestClient

    from app.studio.server import build_app

    app, other = build_app(ctx.settings, ACCOUNTS, "127.0.0.1")
    paths = [getattr(route, "path", None) for route in app.routes]
    assert "/rate" in paths and paths.index("/rate") < paths.index("")  # "/" mounts as ""
    moved = TestClient(app).get("/rate?x=1", follow_redirects=False)  # the address the README gives raters
    assert moved.status_code == 307 and moved.headers["location"] == "/rate/?x=1"
    other.factory.kw["bind"].dispose()
    app, other = build_app(ctx.settings, Accounts(None), "127.0.0.1")
    assert "/rate" not in [getattr(route, "path", None) for route in app.routes]
    assert TestClient(app).get("/rate", follow_redirects=False).status_code == 404  # single-user: no rating page
    other.factory.kw["bind"].dispose()
