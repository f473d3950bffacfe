"""Model references (core/refs.py): every form parses to one typed value and formats back to the same text, the
errors name `model`, the default step count has one rule, and no other module slices reference strings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.refs import TEACHER_STEPS, ModelRef, default_steps, parse_ref, student_steps

ROOT = Path(__file__).resolve().parents[2]

FORMS = [
    ("teacher:digits", ModelRef("teacher", "digits", None)),
    ("teacher:digits@8", ModelRef("teacher", "digits", 8)),
    ("run:7", ModelRef("run", "7", None)),
    ("run:7@2", ModelRef("run", "7", 2)),
    ("runs/7", ModelRef("folder", "runs/7", None)),
    ("/data/runs/7@4", ModelRef("folder", "/data/runs/7", 4)),
    ("a@b/student@4", ModelRef("folder", "a@b/student", 4)),  # only a trailing @digits is a step count
    ("me@home", ModelRef("folder", "me@home", None)),          # an '@' that is part of the folder's name
    ("student:1", ModelRef("folder", "student:1", None)),      # an unknown prefix is a path
]


@pytest.mark.parametrize(("text", "ref"), FORMS)
def test_every_form_parses_to_its_value_and_formats_back(text, ref):
    assert parse_ref(text) == ref
    assert parse_ref(text).text == str(parse_ref(text)) == text
    assert parse_ref(ref.text) == ref


def test_the_builders_write_the_stored_format():
    assert ModelRef.teacher("digits").text == "teacher:digits"
    assert ModelRef.teacher("digits", 50).text == "teacher:digits@50"
    assert ModelRef.run(12).text == "run:12" and ModelRef.run(12).run_id == 12
    assert ModelRef.folder(Path("/x/y"), 1).text == "/x/y@1" and ModelRef.folder("/x/y").path == Path("/x/y")
    assert parse_ref("teacher:digits@8").at(None) == ModelRef.teacher("digits")
    assert parse_ref("teacher:digits").name == "digits" and parse_ref("teacher:digits").is_teacher
    assert not parse_ref("run:3").is_teacher


def test_values_are_frozen():
    with pytest.raises(AttributeError):
        parse_ref("run:1").steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(("text", "message"), [
    ("", r"^model: '' is empty; give teacher:NAME\[@STEPS\], run:ID or a student folder$"),
    ("   ", r"^model: '   ' is empty"),
    ("teacher:", r"^model: 'teacher:' names no teacher \(teacher:NAME\[@STEPS\]\)$"),
    ("teacher:@4", r"^model: 'teacher:@4' names no teacher"),
    ("teacher:digits@0", r"^model: 'teacher:digits@0' has a bad step count '0' \(an integer in \[1, 1000\]\)$"),
    ("teacher:digits@1001", r"^model: 'teacher:digits@1001' has a bad step count '1001'"),
    ("teacher:digits@fifty", r"^model: 'teacher:digits@fifty' has a bad step count 'fifty'"),
    ("run:seven", r"^model: 'run:seven' is not run:ID with a numeric id$"),
    ("run:", r"^model: 'run:' is not run:ID with a numeric id$"),
    ("run:7@x", r"^model: 'run:7@x' has a bad step count 'x'"),
    ("folder@0", r"^model: 'folder@0' has a bad step count '0'"),
])
def test_bad_references_name_model(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ref(text)


def test_accessors_refuse_the_wrong_kind():
    with pytest.raises(ValueError, match=r"^model: 'run:3' is not a teacher reference$"):
        _ = parse_ref("run:3").name
    with pytest.raises(ValueError, match=r"^model: 'teacher:digits' is not a run reference$"):
        _ = parse_ref("teacher:digits").run_id
    with pytest.raises(ValueError, match=r"^model: 'run:3' is not a folder reference$"):
        _ = parse_ref("run:3").path
    with pytest.raises(ValueError, match="bad step count"):
        ModelRef.teacher("digits", 0)
    with pytest.raises(ValueError, match="bad target"):
        ModelRef("run", "x")


def test_default_steps_has_one_rule():
    spec = {"config": {"student_steps": 4}}
    assert default_steps(parse_ref("teacher:digits")) == TEACHER_STEPS == 50
    assert default_steps(parse_ref("teacher:digits@8")) == 8
    assert default_steps(parse_ref("run:3"), spec) == 4 and default_steps(parse_ref("run:3@2"), spec) == 2
    assert default_steps(parse_ref("some/student"), spec) == 4
    with pytest.raises(ValueError, match="is a student; its step count comes from its spec"):
        default_steps(parse_ref("some/student"))


def test_student_steps_reads_a_folder_spec_or_a_run_spec():
    assert student_steps({"config": {"student_steps": 2}}) == 2
    assert student_steps({"teacher": "digits", "method": "mmd", "student_steps": 4}) == 4
    # A run queued without student_steps was distilled at its preset's count.
    assert student_steps({"teacher": "digits", "method": "mmd", "preset": "default", "student_steps": None}) == 8
    assert student_steps({"teacher": "digits", "method": "mmd", "preset": "4-step"}) == 4
    assert student_steps({"teacher": "digits", "method": "dmd2"}) == 1


# -- no module but core/refs.py slices or builds reference strings ---------------------------------------------

SLICING = [
    re.compile(r"""startswith\(\s*["'](teacher|run):["']"""),
    re.compile(r"""removeprefix\(\s*["'](teacher|run):["']"""),
    re.compile(r"""partition\(\s*["']:["']\s*\)"""),
    re.compile(r"""\bf["'](teacher|run):\{"""),
    re.compile(r"""\[4:\]"""),
]
# partition(":") on strings that are not model references: accounts (name:hash:role) and lease owners (host:pid).
ALLOWED = {("app/studio/access.py", 'item.partition(":")'), ("app/studio/access.py", 'rest.rpartition(":")'),
           ("workers/jobs.py", 'owner.rpartition(":")')}


def _offences(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for pattern in SLICING:
            match = pattern.search(line)
            if match and not any(rel == where and snippet in line for where, snippet in ALLOWED):
                found.append(f"{rel}:{number}: {line.strip()}")
    return found


def test_the_scanner_sees_each_way_of_slicing():
    lines = ['if model.startswith("teacher:"):', "ref.removeprefix('run:')", 'kind, _, name = ref.partition(":")',
             'f"teacher:{name}"', "int(ref[4:])"]
    assert [bool(any(p.search(line) for p in SLICING)) for line in lines] == [True] * 5
    assert not any(p.search('caption.startswith("teacher")') for p in SLICING)
    assert not any(p.search("str(exc).removeprefix('teacher: ')") for p in SLICING)  # an error's field, not a ref


def test_no_module_outside_core_refs_slices_reference_strings():
    files = [p for layer in ("app", "workers", "storage", "core") for p in sorted((ROOT / layer).rglob("*.py"))]
    assert files
    bad = [line for path in files if path != ROOT / "core" / "refs.py" for line in _offences(path)]
    assert bad == []
