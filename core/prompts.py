"""Prompt sets: a named list of prompts read from a UTF-8 text file, one prompt per line. Torch-free, so the web app can
check an upload before anything is queued; the engine reads the same file with the same function.

The format, in full:
- UTF-8 text (a leading byte-order mark is tolerated, as editors on Windows write one); LF or CRLF line ends.
- One prompt per line. Surrounding whitespace is dropped and blank lines are skipped.
- There is no comment syntax: every other line is a prompt, because a prompt may well begin with `#` (a hashtag) and a
  comment rule would drop it without a word.
- Duplicate prompts are kept, in order: a set may repeat a prompt on purpose (to weight it in training, or to draw
  several seeds of it for a study grid), and dropping them would change the set's size behind the user's back.
- Refused, with one line naming the file and the line: bytes that are not UTF-8, a file with no prompt, a line longer
  than MAX_PROMPT_CHARS, and control characters (tab aside) or Unicode line/paragraph separators in a line.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# Why 1,000: CLIP's tokenizer reads 77 tokens (about 300-400 characters of English) and truncates the rest, which is the
# pipelines' own behaviour, so longer prompts stay legal; a line ten times that long is not a prompt but a file that is
# not a prompt list (a JSON dump, a CSV row, minified text), which is refused instead of being silently truncated.
MAX_PROMPT_CHARS = 1000
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class PromptSet:
    """A named list of prompts and the file it came from (sha256 of the file's bytes: the exact file a run used)."""

    name: str
    prompts: tuple[str, ...]
    source: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.prompts)


def show_path(path: Path | str) -> str:
    """The path as it goes into a one-line message (repr-quoted if it holds characters that would break the line)."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def read_utf8(path: Path | str, tag: str) -> tuple[bytes, str]:
    """The file's bytes and its text; ValueError `TAG: FILE ...` if it cannot be read or is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{tag}: {show_path(path)} cannot be read ({err.strerror or type(err).__name__})") from None
    body = data[len(_BOM):] if data.startswith(_BOM) else data
    try:
        return data, body.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + len(data) - len(body)  # counted in the file, byte-order mark included
        raise ValueError(f"{tag}: {show_path(path)} is not UTF-8 text (byte {offset})") from None


_FORBIDDEN = {"Cc": "control character", "Zl": "line separator", "Zp": "paragraph separator", "Cs": "unpaired surrogate"}


def forbidden_char(text: str) -> str | None:
    """The first character of `text` no prompt may hold, described (`the control character U+0007`), or None.

    Tab is whitespace a tokenizer folds; any other control character or a line/paragraph separator would make one prompt
    print as several lines or carry invisible bytes into the text encoder, and an unpaired surrogate (only JSON's
    escapes can make one) cannot be stored as UTF-8."""
    for char in text:
        kind = _FORBIDDEN.get(unicodedata.category(char)) if char != "\t" else None
        if kind is not None:
            return f"the {kind} U+{ord(char):04X}"
    return None


def prompt_problem(text: str) -> str | None:
    """Why `text` cannot be a prompt (a forbidden character, too long once stripped), or None; used for captions too.

    Characters are looked at before stripping, since str.strip() would drop some controls (U+001C-U+001F, U+0085)."""
    bad = forbidden_char(text)
    if bad is not None:
        return f"holds {bad}"
    if len(text.strip()) > MAX_PROMPT_CHARS:
        return f"is {len(text.strip())} characters long, over the limit of {MAX_PROMPT_CHARS}"
    return None


def split_lines(text: str) -> list[str]:
    """Lines split on LF only, one CR of a CRLF end removed, so any other control character is seen, not split on."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def parse_prompts(text: str, where: str) -> tuple[str, ...]:
    """The prompts of a prompt file's text; `where` names the file in errors."""
    prompts = []
    for number, line in enumerate(split_lines(text), start=1):
        problem = prompt_problem(line)
        if problem is not None:
            raise ValueError(f"prompts: {where} line {number} {problem}")
        if line.strip():
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"prompts: {where} has no prompts (every line is blank)")
    return tuple(prompts)


def read_prompt_file(path: Path | str, name: str | None = None) -> PromptSet:
    """The prompt set in `path`, named `name` (default: the file's stem); ValueError with one line otherwise."""
    path = Path(path)
    name = path.stem if name is None else name.strip()
    if not name:
        raise ValueError(f"prompts: {show_path(path)} needs a name (got an empty one)")
    data, text = read_utf8(path, "prompts")
    prompts = parse_prompts(text, show_path(path))
    return PromptSet(name=name, prompts=prompts, source=path, sha256=hashlib.sha256(data).hexdigest())
