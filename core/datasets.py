"""Image-folder datasets: images plus a `metadata.jsonl` of captions, the Hugging Face `imagefolder` layout. Torch-free,
so the web app can check an upload before anything is queued; the engine reads the folder with the same function.

The format, in full:
- FOLDER/metadata.jsonl, UTF-8, one JSON object per line with `file_name` (a path relative to FOLDER, `/`-separated)
  and `text` (the caption, held to the prompt rules of core/prompts.py). Other keys are ignored; blank lines skipped.
- Only FOLDER/metadata.jsonl is read (not metadata.csv, not metadata files in subfolders).
- Images present in the folder but not listed are ignored: the metadata is the dataset, so a folder can hold extras.
- Refused, with one line naming metadata.jsonl and the line: a line that is not a JSON object; a missing, non-string or
  empty `file_name` or `text`; a `file_name` that leaves the folder (absolute, `..`, or a symlink resolving outside);
  a `file_name` listed twice; an image that is missing or that PIL cannot open and verify; an image mode outside
  ACCEPTED_MODES; an image whose size differs from the first one's.
- Size: all images share one size, so they batch as they are. With `resolution` given that size must also be square
  and at least `resolution` pixels a side (the engine downsizes to it; upsizing would train on blur).
- Mode: the 8-bit modes in ACCEPTED_MODES are accepted and converted to RGB when loaded (alpha is dropped); the others
  are refused, since converting them loses information the file does not say how to keep.

Images are only opened and verified (PIL reads the header and checks the file's structure, PNG chunk checksums among
it, without decoding pixels), so a folder of thousands checks in seconds; a JPEG cut short after its header passes this
check and fails when the engine decodes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from core.prompts import forbidden_char, prompt_problem, read_utf8, show_path, split_lines

METADATA = "metadata.jsonl"
# 8 bits per channel, so each converts to RGB exactly. Refused: CMYK/YCbCr/LAB (colour conversion without the file's
# ICC profile shifts colours) and 16-bit or float modes (I;16, I, F: the scale to 8 bits is not stated by the file).
ACCEPTED_MODES = ("RGB", "RGBA", "L", "LA", "P")


@dataclass(frozen=True)
class ImageFolder:
    """A checked dataset: its folder, (file relative to root, caption) per listed image in metadata order, and the size
    (width, height) all its images share."""

    root: Path
    items: tuple[tuple[str, str], ...]
    size: tuple[int, int]

    @property
    def count(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class _Image:
    line: int
    file: str
    size: tuple[int, int]


def _fail(where: str, line: int, problem: str) -> ValueError:
    return ValueError(f"data: {where} line {line}: {problem}")


def _record(line: str, where: str, number: int) -> tuple[str, str]:
    """(file_name, text) of one metadata line."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise _fail(where, number, f"is not JSON ({err.msg} at column {err.colno})") from None
    except (ValueError, RecursionError):  # a number of over 4,300 digits; arrays nested thousands deep
        raise _fail(where, number, "is not JSON this reader accepts (a huge number or deep nesting)") from None
    if not isinstance(value, dict):
        raise _fail(where, number, f"is not a JSON object (got a {type(value).__name__})")
    for key, what in (("file_name", "the image's path"), ("text", "the caption")):
        if key not in value:
            raise _fail(where, number, f"has no {key} ({what})")
        if not isinstance(value[key], str):
            raise _fail(where, number, f"{key} must be a string, got a {type(value[key]).__name__}")
        if not value[key].strip():
            raise _fail(where, number, f"{key} is empty")
    problem = prompt_problem(value["text"])
    if problem is not None:
        raise _fail(where, number, f"text {problem}")
    return value["file_name"], value["text"].strip()


def _relative(name: str, root: str) -> str:
    """`name` normalised to a path inside `root`, or the reason it is not one (raised as ValueError)."""
    bad = forbidden_char(name)
    if bad is not None:
        raise ValueError(f"file_name holds {bad}")
    if "\\" in name or PurePosixPath(name).is_absolute() or (name[:1].isalpha() and name[1:2] == ":"):
        raise ValueError(f"file_name {name!r} must be a relative path with / separators")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise ValueError(f"file_name {name!r} leaves the folder (..)")
    real = os.path.realpath(os.path.join(root, *path.parts))
    if os.path.commonpath([real, root]) != root:
        raise ValueError(f"file_name {name!r} leaves the folder (a symlink resolving to {real})")
    return str(path)


def _open(path: str) -> tuple[tuple[int, int], str]:
    """(size, mode) of the image at `path`, read from its header after PIL verified the file."""
    with Image.open(path) as image:
        size, mode = image.size, image.mode
        image.verify()
    return size, mode


def _check_image(root: str, file: str, where: str, number: int) -> _Image:
    path = os.path.join(root, file)
    if not os.path.isfile(path):
        raise _fail(where, number, f"{file} does not exist")
    try:
        size, mode = _open(path)
    except Exception as err:  # PIL's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        detail = " ".join(str(err).split()) or type(err).__name__
        raise _fail(where, number, f"{file} is not a readable image ({detail})") from None
    if mode not in ACCEPTED_MODES:
        raise _fail(where, number, f"{file} has mode {mode}; accepted: {', '.join(ACCEPTED_MODES)}")
    return _Image(number, file, size)


def _read_line(line: str, number: int, root: str, where: str, seen: dict[str, int]) -> tuple[_Image, str]:
    """The checked image and caption of one metadata line; records its file in `seen`."""
    name, caption = _record(line, where, number)
    try:
        file = _relative(name, root)
    except ValueError as err:
        raise _fail(where, number, str(err)) from None
    if file in seen:
        raise _fail(where, number, f"{file} is already listed on line {seen[file]}")
    seen[file] = number
    return _check_image(root, file, where, number), caption


def _check_size(image: _Image, first: _Image, resolution: int | None, where: str) -> None:
    (width, height), (w0, h0) = image.size, first.size
    if image.size != first.size:
        raise _fail(where, image.line, f"{image.file} is {width}x{height}, but {first.file} (line {first.line}) is "
                                       f"{w0}x{h0}; all images must share one size")
    if resolution is not None and (width != height or width < resolution):
        raise _fail(where, image.line, f"{image.file} is {width}x{height}; at resolution {resolution} images must be "
                                       f"square and at least {resolution}x{resolution}")


def _check_resolution(resolution: int | None) -> None:
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"data: resolution must be a positive integer, got {resolution!r}")


def read_image_folder(folder: Path | str, *, resolution: int | None = None) -> ImageFolder:
    """The dataset in `folder`, every listed image checked; ValueError with one line naming the file and line otherwise."""
    _check_resolution(resolution)
    if not os.path.isdir(folder):
        raise ValueError(f"data: {show_path(folder)} is not a folder")
    root = os.path.realpath(folder)
    metadata = os.path.join(root, METADATA)
    if not os.path.isfile(metadata):
        raise ValueError(f"data: {show_path(folder)} has no {METADATA} (one JSON object per line with file_name and text)")
    where = show_path(metadata)
    _, text = read_utf8(metadata, "data")
    items: list[tuple[str, str]] = []
    seen: dict[str, int] = {}  # file -> the line that listed it
    first: _Image | None = None
    for number, line in enumerate(split_lines(text), start=1):
        if line.strip():
            image, caption = _read_line(line, number, root, where, seen)
            first = first or image
            _check_size(image, first, resolution, where)
            items.append((image.file, caption))
    if first is None:
        raise ValueError(f"data: {where} lists no images")
    return ImageFolder(root=Path(root), items=tuple(items), size=first.size)
