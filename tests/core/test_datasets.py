"""Image-folder datasets (core/datasets.py): what a folder holds, each refusal as one line naming metadata.jsonl and the
line, and random metadata that either reads or is refused with a `data:` line, never another exception."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.datasets import METADATA, ImageFolder, read_image_folder

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def image(path, size=(8, 8), mode="RGB", fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path, fmt)
    return path


def metadata(folder, *lines):
    """Writes metadata.jsonl: dict lines as JSON, str lines as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(line) if isinstance(line, dict) else line for line in lines) + "\n"
    (folder / METADATA).write_text(text, encoding="utf-8")
    return str(folder / METADATA)


def row(file_name, text="a cat"):
    return {"file_name": file_name, "text": text}


@pytest.fixture
def folder(tmp_path):
    """Two 8x8 images, a.png and sub/b.png."""
    root = tmp_path / "data"
    image(root / "a.png")
    image(root / "sub" / "b.png")
    return root


def refusal(folder, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        read_image_folder(folder, **kwargs)
    message = str(info.value)
    assert message.startswith("data: ") and "\n" not in message
    return message


# --- what a folder holds ---

def test_listed_images_are_read_in_order_with_their_captions(folder):
    metadata(folder, row("sub/b.png", "  a dog  "), "", row("a.png", "a cat"))
    got = read_image_folder(folder)
    assert got == ImageFolder(root=folder.resolve(), items=(("sub/b.png", "a dog"), ("a.png", "a cat")), size=(8, 8))
    assert got.count == 2


def test_unlisted_images_and_other_keys_are_ignored(folder):
    image(folder / "extra.png", size=(4, 4))
    metadata(folder, {"file_name": "a.png", "text": "a cat", "score": 7, "tags": ["x"]})
    assert read_image_folder(folder).items == (("a.png", "a cat"),)


def test_file_names_are_normalised(folder):
    metadata(folder, row("./sub//b.png"))
    assert read_image_folder(str(folder)).items == (("sub/b.png", "a cat"),)


def test_a_symlink_inside_the_folder_is_followed(folder):
    os.symlink(folder / "a.png", folder / "link.png")
    metadata(folder, row("link.png"))
    assert read_image_folder(folder).count == 1


@pytest.mark.parametrize(("mode", "fmt"), [("L", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGB", "JPEG")])
def test_eight_bit_modes_are_accepted(tmp_path, mode, fmt):
    image(tmp_path / "x.img", mode=mode, fmt=fmt)
    metadata(tmp_path, row("x.img"))
    assert read_image_folder(tmp_path).size == (8, 8)


@pytest.mark.parametrize("resolution", [4, 8])
def test_square_images_at_or_above_the_resolution_are_accepted(folder, resolution):
    metadata(folder, row("a.png"), row("sub/b.png"))
    assert read_image_folder(folder, resolution=resolution).size == (8, 8)


# --- refusals of the folder itself ---

def test_a_missing_folder_is_refused(tmp_path):
    assert refusal(tmp_path / "nope") == f"data: {tmp_path / 'nope'} is not a folder"


def test_a_file_in_place_of_the_folder_is_refused(folder):
    assert refusal(folder / "a.png") == f"data: {folder / 'a.png'} is not a folder"


def test_a_folder_without_metadata_is_refused(folder):
    assert refusal(folder) == f"data: {folder} has no metadata.jsonl (one JSON object per line with file_name and text)"


def test_metadata_that_is_not_utf8_is_refused(folder):
    (folder / METADATA).write_bytes(b'{"file_name": "a.png", "text": "caf\xe9"}\n')
    assert refusal(folder) == f"data: {folder.resolve() / METADATA} is not UTF-8 text (byte 35)"


def test_metadata_without_lines_is_refused(folder):
    where = metadata(folder, "", "  ")
    assert refusal(folder) == f"data: {where} lists no images"


@pytest.mark.parametrize("resolution", [0, -8, 1.5, "64", True])
def test_a_bad_resolution_is_refused(folder, resolution):
    assert refusal(folder, resolution=resolution) == f"data: resolution must be a positive integer, got {resolution!r}"


# --- refusals of one line, naming metadata.jsonl and the line ---

@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "is not JSON (Expecting property name enclosed in double quotes at column 2)"),
    ('["a.png", "a cat"]', "is not a JSON object (got a list)"),
    ('"a.png"', "is not a JSON object (got a str)"),
    ("[" * 100_000, "is not JSON this reader accepts (a huge number or deep nesting)"),
    ({"text": "a cat"}, "has no file_name (the image's path)"),
    ({"file_name": "sub/b.png"}, "has no text (the caption)"),
    ({"file_name": 3, "text": "a cat"}, "file_name must be a string, got a int"),
    ({"file_name": "sub/b.png", "text": None}, "text must be a string, got a NoneType"),
    ({"file_name": "sub/b.png", "text": "  "}, "text is empty"),
    ({"file_name": "", "text": "a cat"}, "file_name is empty"),
    ({"file_name": "sub/b.png", "text": "two\nlines"}, "text holds the control character U+000A"),
    ({"file_name": "sub/b.png", "text": "x" * 1001}, "text is 1001 characters long, over the limit of 1000"),
    ({"file_name": "sub/b.png", "text": "\ud800"}, "text holds the unpaired surrogate U+D800"),
    ({"file_name": "a\x00.png", "text": "a cat"}, "file_name holds the control character U+0000"),
])
def test_a_bad_line_is_refused_naming_it(folder, line, problem):
    where = metadata(folder, row("a.png"), "", line)
    assert refusal(folder) == f"data: {where} line 3: {problem}"


@pytest.mark.parametrize(("name", "problem"), [
    ("/etc/passwd", "must be a relative path with / separators"),
    ("C:/images/a.png", "must be a relative path with / separators"),
    ("sub\\b.png", "must be a relative path with / separators"),
    ("../data/a.png", "leaves the folder (..)"),
    ("sub/../a.png", "leaves the folder (..)"),
])
def test_a_file_name_leaving_the_folder_is_refused(folder, name, problem):
    where = metadata(folder, row(name))
    assert refusal(folder) == f"data: {where} line 1: file_name {name!r} {problem}"


def test_a_symlink_resolving_outside_the_folder_is_refused(folder, tmp_path):
    outside = image(tmp_path / "outside.png")
    os.symlink(outside, folder / "sneaky.png")
    where = metadata(folder, row("sneaky.png"))
    assert refusal(folder) == f"data: {where} line 1: file_name 'sneaky.png' leaves the folder (a symlink resolving to {outside})"


def test_a_file_listed_twice_is_refused(folder):
    where = metadata(folder, row("a.png"), row("sub/b.png"), row("./a.png", "another caption"))
    assert refusal(folder) == f"data: {where} line 3: a.png is already listed on line 1"


def test_a_missing_image_is_refused(folder):
    where = metadata(folder, row("a.png"), row("sub/c.png"))
    assert refusal(folder) == f"data: {where} line 2: sub/c.png does not exist"


def test_a_folder_listed_as_an_image_is_refused(folder):
    where = metadata(folder, row("sub"))
    assert refusal(folder) == f"data: {where} line 1: sub does not exist"


def test_a_file_that_is_not_an_image_is_refused(folder):
    (folder / "notes.png").write_text("not an image")
    where = metadata(folder, row("a.png"), row("notes.png"))
    assert refusal(folder).startswith(f"data: {where} line 2: notes.png is not a readable image (")


def test_a_corrupted_png_is_refused(folder):
    data = bytearray((folder / "a.png").read_bytes())
    data[40] ^= 0xFF  # inside the image data chunk: its checksum no longer matches
    (folder / "bad.png").write_bytes(bytes(data))
    where = metadata(folder, row("bad.png"))
    assert refusal(folder).startswith(f"data: {where} line 1: bad.png is not a readable image (")


@pytest.mark.parametrize(("mode", "fmt"), [("CMYK", "JPEG"), ("I;16", "PNG"), ("F", "TIFF"), ("1", "PNG")])
def test_other_modes_are_refused(folder, mode, fmt):
    image(folder / "odd.img", mode=mode, fmt=fmt)
    where = metadata(folder, row("a.png"), row("odd.img"))
    assert refusal(folder) == f"data: {where} line 2: odd.img has mode {mode}; accepted: RGB, RGBA, L, LA, P"


def test_images_of_another_size_are_refused(folder):
    image(folder / "big.png", size=(16, 8))
    where = metadata(folder, row("a.png"), row("sub/b.png"), row("big.png"))
    assert refusal(folder) == (f"data: {where} line 3: big.png is 16x8, but a.png (line 1) is 8x8; "
                               "all images must share one size")


def test_at_a_resolution_images_must_be_square(tmp_path):
    image(tmp_path / "wide.png", size=(16, 8))
    where = metadata(tmp_path, row("wide.png"))
    assert read_image_folder(tmp_path).size == (16, 8)
    assert refusal(tmp_path, resolution=8) == (f"data: {where} line 1: wide.png is 16x8; at resolution 8 images must be "
                                               "square and at least 8x8")


def test_at_a_resolution_images_must_not_be_smaller(folder):
    where = metadata(folder, row("a.png"))
    assert refusal(folder, resolution=16) == (f"data: {where} line 1: a.png is 8x8; at resolution 16 images must be "
                                              "square and at least 16x16")


# --- properties: any metadata reads or is refused with one `data:` line ---

def read_or_refusal(root):
    try:
        return read_image_folder(root)
    except ValueError as err:
        message = str(err)
        assert message.startswith("data: ") and "\n" not in message, message
        return None


NAMES = st.one_of(st.sampled_from(["a.png", "sub/b.png", "./a.png", "sub", "missing.png", "../a.png", "/a.png",
                                   "sub/../a.png", "a.png/", "~", ".", "", METADATA]),
                  st.text(max_size=30), st.text(alphabet="./ab\\", max_size=12), st.text(min_size=300, max_size=400))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
GOOD = st.builds(lambda name, text: json.dumps(row(name, text)), st.sampled_from(["a.png", "sub/b.png", "./a.png"]),
                 st.text(alphabet="ab c", min_size=1, max_size=10).filter(str.strip))
LINES = st.one_of(
    GOOD,
    st.builds(lambda name, text: json.dumps({"file_name": name, "text": text}), NAMES, st.text(max_size=40)),
    st.builds(lambda obj: json.dumps(obj), st.dictionaries(st.sampled_from(["file_name", "text", "x"]), JSON | NAMES)),
    JSON.map(json.dumps),
    st.text(max_size=60),
)


@FUZZ
@given(st.lists(LINES, max_size=6) | st.lists(GOOD, max_size=3))
def test_random_metadata_reads_or_is_refused_with_one_line(folder, lines):
    (folder / METADATA).write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    got = read_or_refusal(folder)
    if got is not None:
        assert 1 <= got.count <= len(lines) and got.size == (8, 8)
        assert {file for file, _ in got.items} <= {"a.png", "sub/b.png"}


@FUZZ
@given(st.binary(max_size=200))
def test_random_metadata_bytes_are_refused_with_one_line(folder, data):
    (folder / METADATA).write_bytes(data)
    read_or_refusal(folder)


@FUZZ
@given(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"]), st.binary(max_size=200))
def test_random_image_bytes_read_or_are_refused_with_one_line(folder, magic, data):
    (folder / "x.img").write_bytes(magic + data)
    metadata(folder, row("x.img"))
    read_or_refusal(folder)
