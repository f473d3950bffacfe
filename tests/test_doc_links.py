"""Every document a file of the repository refers to exists: a `*.md` path must exist relative to the repository root
or to the referring file's folder, and a `#anchor` after it must be one of that document's headings (GitHub's slugs).
A bare file name (`quality.md`, as the benchmark scripts name the reports they write into benchmarks/results/) may also
name a document anywhere in the repository. The team's design notes that are not part of the repository may not be
mentioned at all, path or not.

The checker is one function over a folder and its file list, run on the repository and on a temporary folder with a
broken reference, so the test is shown to fail when a reference breaks."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A path ending in .md, not glued to a longer token (`x.md.txt`, `owner/repo:path.md` and URLs are not references).
REFERENCE = re.compile(r"(?<![\w./:\\-])([\w][\w.-]*(?:/[\w.-]+)*\.md)(?:#([\w-]+))?(?![\w/]|\.\w)")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
# Design notes kept outside the repository: a mention of one points a reader at nothing they can open.
OUTSIDE = re.compile(r"\b(?:DESIGN|METHODS|STUDY|STYLE)\.md\b")
SAME_FILE_ANCHOR = re.compile(r"\]\(#([\w-]+)\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def repo_files(root: Path = ROOT) -> list[str]:
    """Tracked files plus untracked files git does not ignore, so a file not yet committed is checked too."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return sorted({name for name in out.split("\0") if name})


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation but '-' and '_' dropped, spaces '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading renders as its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a markdown document's headings (outside code fences); repeated headings get -1, -2, ..."""
    seen: Counter[str] = Counter()
    found, fenced = set(), False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match[1])
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None  # a binary file (weights, images)
    return data.decode("utf-8", errors="replace")


def _target(root: Path, referrer: str, ref: str, by_name: dict[str, Path]) -> Path | None:
    for base in (root, (root / referrer).parent):
        candidate = (base / ref).resolve()
        if candidate.is_relative_to(root.resolve()) and candidate.is_file():
            return candidate
    return by_name.get(ref) if "/" not in ref else None


def broken_references(root: Path, files: list[str]) -> list[str]:
    """'file:line: why' for every reference in `files` (paths relative to `root`) to a document that does not exist,
    an anchor that is not one of its headings, or a design note outside the repository."""
    problems: list[str] = []
    headings: dict[Path, set[str]] = {}
    by_name = {Path(name).name: (root / name).resolve() for name in files if name.endswith(".md")}

    def anchors_of(path: Path) -> set[str]:
        if path not in headings:
            headings[path] = anchors(_read_text(path) or "")
        return headings[path]

    for name in files:
        text = _read_text(root / name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{name}:{number}"
            for match in OUTSIDE.finditer(line):
                problems.append(f"{where}: {match[0]} is not in the repository (see docs/)")
            for match in REFERENCE.finditer(URL.sub(" ", line)):
                ref, anchor = match[1], match[2]
                if OUTSIDE.fullmatch(Path(ref).name):
                    continue  # reported above
                target = _target(root, name, ref, by_name)
                if target is None:
                    problems.append(f"{where}: {ref} does not exist")
                elif anchor and anchor not in anchors_of(target):
                    problems.append(f"{where}: {ref}#{anchor}: no such heading")
            if name.endswith(".md"):
                for match in SAME_FILE_ANCHOR.finditer(line):
                    if match[1] not in anchors_of((root / name).resolve()):
                        problems.append(f"{where}: #{match[1]}: no such heading")
    return problems


def test_every_document_reference_resolves():
    # This file's own fixtures below are broken on purpose.
    files = [name for name in repo_files() if name != "tests/test_doc_links.py"]
    problems = broken_references(ROOT, files)
    assert not problems, "references to documents that do not exist:\n" + "\n".join(problems)


def test_checker_finds_broken_references(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## The job protocol\n\n```\n# not a heading\n```\n"
                                                "## Jobs\n## Jobs\n")
    outside = "STUDY" + ".md"  # spelled apart so this file does not mention it
    (tmp_path / "app.py").write_text(
        '"""See docs/guide.md#the-job-protocol and docs/guide.md#jobs-1."""\n'
        f"# {outside} §2, docs/missing.md, docs/guide.md#not-a-heading, docs/guide.md#not-a-heading\n"
        "# https://example.org/notes.md and x.md.txt are not references; index.md is one, by its name\n"
        "# but other/index.md is not: a path must resolve\n")
    (tmp_path / "docs" / "index.md").write_text("[guide](guide.md), [top](#index), [gone](#gone)\n# Index\n")
    problems = broken_references(tmp_path, ["app.py", "docs/index.md", "docs/guide.md"])
    assert problems == [f"app.py:2: {outside} is not in the repository (see docs/)",
                        "app.py:2: docs/missing.md does not exist",
                        "app.py:2: docs/guide.md#not-a-heading: no such heading",
                        "app.py:2: docs/guide.md#not-a-heading: no such heading",
                        "app.py:4: other/index.md does not exist",
                        "docs/index.md:1: #gone: no such heading"]


def test_slug_follows_github():
    assert slug("Set-up and tests") == "set-up-and-tests"
    assert slug("Blind A/B study") == "blind-ab-study"
    assert slug("Quality (`make bench`, i.e. `python benchmarks/teachers.py`)") == \
        "quality-make-bench-ie-python-benchmarksteacherspy"
    assert slug("Bradley-Terry anchored at the teacher") == "bradley-terry-anchored-at-the-teacher"
    assert slug("See [the docs](docs/x.md) first") == "see-the-docs-first"
