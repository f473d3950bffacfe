"""Prompt sets (core/prompts.py): what a prompt file holds, each refusal as one line naming the file and the line, and
random files that either parse or are refused with a `prompts:` line, never another exception."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.prompts import MAX_PROMPT_CHARS, PromptSet, read_prompt_file

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(tmp_path, content: str | bytes, name: str = "cats.txt"):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def refusal(path, name=None) -> str:
    with pytest.raises(ValueError) as info:
        read_prompt_file(path, name)
    message = str(info.value)
    assert message.startswith("prompts: ") and "\n" not in message
    return message


# --- what a prompt file holds ---

def test_one_prompt_per_line_stripped_blank_lines_dropped(tmp_path):
    path = write(tmp_path, "a cat on a mat\n\n   a dog\tin fog  \n\t\nthe end")
    got = read_prompt_file(path)
    assert got == PromptSet("cats", ("a cat on a mat", "a dog\tin fog", "the end"), path,
                            hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(got) == 3


def test_the_name_defaults_to_the_stem_and_can_be_given(tmp_path):
    path = write(tmp_path, "x\n", name="my.prompts.txt")
    assert read_prompt_file(path).name == "my.prompts"
    assert read_prompt_file(str(path), name=" animals ").name == "animals"


def test_crlf_line_ends_and_a_byte_order_mark_are_read(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfone\r\ntwo\r\n")
    assert read_prompt_file(path).prompts == ("one", "two")


def test_duplicates_are_kept_in_order_and_hashes_have_no_comment_syntax(tmp_path):
    path = write(tmp_path, "a cat\n#sunset over the sea\na cat\n")
    assert read_prompt_file(path).prompts == ("a cat", "#sunset over the sea", "a cat")


def test_the_hash_is_of_the_file_bytes(tmp_path):
    first = read_prompt_file(write(tmp_path, "a cat\n", name="a.txt"))
    second = read_prompt_file(write(tmp_path, "a cat  \n", name="b.txt"))
    assert first.prompts == second.prompts and first.sha256 != second.sha256


def test_a_line_at_the_limit_is_accepted_and_unicode_is_kept(tmp_path):
    path = write(tmp_path, "é" * MAX_PROMPT_CHARS + "\n猫が座っている 🐈\n")
    assert read_prompt_file(path).prompts == ("é" * MAX_PROMPT_CHARS, "猫が座っている 🐈")


# --- refusals, one line each, naming the file and (where it applies) the line ---

def test_a_missing_file_is_refused(tmp_path):
    message = refusal(tmp_path / "nope.txt")
    assert message.startswith(f"prompts: {tmp_path / 'nope.txt'} cannot be read")


def test_a_folder_is_refused(tmp_path):
    assert refusal(tmp_path).startswith(f"prompts: {tmp_path} cannot be read")


def test_bytes_that_are_not_utf8_are_refused_with_their_offset(tmp_path):
    path = write(tmp_path, b"fine\nca\xfffe\n")
    assert refusal(path) == f"prompts: {path} is not UTF-8 text (byte 7)"


def test_the_offset_counts_the_byte_order_mark(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfab\xc3")
    assert refusal(path) == f"prompts: {path} is not UTF-8 text (byte 5)"


@pytest.mark.parametrize("content", ["", "\n\n", "  \t \r\n   \n"])
def test_a_file_without_prompts_is_refused(tmp_path, content):
    path = write(tmp_path, content)
    assert refusal(path) == f"prompts: {path} has no prompts (every line is blank)"


def test_a_line_over_the_limit_is_refused_naming_the_line(tmp_path):
    path = write(tmp_path, "ok\n\n" + "x" * (MAX_PROMPT_CHARS + 1) + "\n")
    assert refusal(path) == f"prompts: {path} line 3 is 1001 characters long, over the limit of {MAX_PROMPT_CHARS}"


@pytest.mark.parametrize(("char", "kind"), [("\x07", "control character U+0007"), ("\x00", "control character U+0000"),
                                            ("\x0b", "control character U+000B"), ("\x1c", "control character U+001C"),
                                            ("\x85", "control character U+0085"), ("\r", "control character U+000D"),
                                            ("\u2028", "line separator U+2028")])
def test_control_characters_are_refused_naming_the_line(tmp_path, char, kind):
    path = write(tmp_path, f"ok\nbad{char}one\n")
    assert refusal(path) == f"prompts: {path} line 2 holds the {kind}"


def test_a_control_character_that_strip_would_drop_is_still_refused(tmp_path):
    path = write(tmp_path, "a cat\x1f\n")
    assert refusal(path) == f"prompts: {path} line 1 holds the control character U+001F"


def test_an_empty_name_is_refused(tmp_path):
    path = write(tmp_path, "a cat\n")
    assert refusal(path, name="  ") == f"prompts: {path} needs a name (got an empty one)"


# --- properties: any file parses or is refused with one `prompts:` line ---

def parse_or_refusal(path):
    try:
        return read_prompt_file(path)
    except ValueError as err:
        message = str(err)
        assert message.startswith(f"prompts: {path} ") and "\n" not in message, message
        return None


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_are_refused_with_one_line(tmp_path, data):
    got = parse_or_refusal(write(tmp_path, data))
    if got is not None:
        assert got.prompts and all(p == p.strip() and p for p in got.prompts)


@FUZZ
@given(st.text(max_size=300))
def test_random_text_parses_or_is_refused_with_one_line(tmp_path, text):
    parse_or_refusal(write(tmp_path, text.encode("utf-8", "surrogatepass")))


# U+FEFF aside: at the start of a file its bytes are the byte-order mark, which is dropped.
PROMPT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\ufeff"), max_size=40)


@FUZZ
@given(st.lists(PROMPT, min_size=1, max_size=20), st.sampled_from(["\n", "\r\n"]))
def test_prompts_written_one_per_line_read_back(tmp_path, prompts, end):
    path = write(tmp_path, end.join(prompts) + end)
    expected = tuple(p.strip() for p in prompts if p.strip())
    got = parse_or_refusal(path)
    assert (got.prompts if got else ()) == expected
