"""The prompts a text-to-image model is evaluated on: a built-in shapes set or a prompt file. Torch-free, so the job
submitter checks them before a row is written (workers/submit.py) with the rules the evaluation uses.

Seed s draws one prompt. From a built-in set (core/shapes.py EVAL_SETS) it is scene s of the set's deterministic
stream: its caption is the prompt and its rendering the real image FID & co. compare with, so disjoint seed ranges
draw disjoint prompts and disjoint reference images. From a prompt file (core/prompts.py) it is prompt s % len: a file
has no images, so only alignment and speed apply to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.prompts import PromptSet, read_prompt_file, read_utf8, show_path, split_lines
from core.shapes import EVAL_SETS, Scene, evaluation_scenes, parse_caption
from core.specs import TeacherInfo

# Why: scene s of a set is found by drawing scenes 0 .. s (shapes-heldout keeps about one draw in four, ~0.8 ms a
# scene on a CPU), so the seeds stay where finding them takes a few minutes at most.
SEED_LIMIT = 200_000
DEFAULT_PROMPTS = {"shapes": "shapes-test"}  # teacher benchmark -> the set its models are evaluated on by default
LABEL_CHARS = 1024  # Evaluation.prompts holds this many characters
# What a teacher's card draws when its benchmark has no prompt set of its own (imported SD/SDXL pipelines): everyday
# scenes that show at a glance whether a pipeline follows objects, colours, styles and counts.
SHOWCASE_PROMPTS = ("a photograph of an astronaut riding a horse", "a red apple on a wooden table",
                    "a watercolor painting of a lighthouse at sunset", "two cats sleeping on a blue sofa")


@dataclass(frozen=True)
class EvalPrompts:
    """A resolved prompt set: a built-in set's name, or a prompt file's absolute path with its prompts."""

    name: str
    file: PromptSet | None = None  # None: a built-in set

    @property
    def builtin(self) -> bool:
        return self.file is None

    @property
    def label(self) -> str:
        """Evaluation.prompts: the set's name, or the file's path and the sha256 of its bytes (12 hex digits)."""
        return self.name if self.file is None else f"{self.name} sha256:{self.file.sha256[:12]}"

    def prompts(self, seeds: Sequence[int]) -> list[str]:
        """The prompt each seed draws."""
        if self.file is None:
            return [scene.caption for scene in set_scenes(self.name, seeds)]
        return [self.file.prompts[s % len(self.file)] for s in seeds]


def showcase_prompts(info: TeacherInfo, k: int = 4) -> list[str]:
    """The fixed prompts a text-to-image teacher's card (and its students') are drawn with: the first `k` of its
    benchmark's evaluation set, else SHOWCASE_PROMPTS."""
    default = DEFAULT_PROMPTS.get(info.benchmark)
    if default is not None:
        return [scene.caption for scene in evaluation_scenes(default, k)]
    return list(SHOWCASE_PROMPTS[:k])


def set_scenes(name: str, seeds: Sequence[int]) -> list[Scene]:
    """Scene s of the built-in set `name` for each seed s."""
    stream = evaluation_scenes(name, max(seeds) + 1)
    return [stream[s] for s in seeds]


def load_prompts(value: str) -> EvalPrompts:
    """A built-in set's name or a prompt file's absolute path, resolved (the file read); ValueError naming `prompts`."""
    if value in EVAL_SETS:
        return EvalPrompts(value)
    if not Path(value).is_absolute():
        raise ValueError(f"prompts: must be a built-in set ({', '.join(EVAL_SETS)}) or a prompt file's absolute path "
                         f"(the worker may run in another folder), got {show_path(value)!r}")
    resolved = EvalPrompts(value, read_prompt_file(value))
    if len(resolved.label) > LABEL_CHARS:
        raise ValueError(f"prompts: the file's path is longer than {LABEL_CHARS - 20} characters")
    return resolved


def resolve_prompts(value: str | None, model: str, info: TeacherInfo) -> EvalPrompts | None:
    """The prompts `model` (whose teacher is `info`) is evaluated on: None for a model that takes no prompts, `value`
    or its teacher's default set for a text-to-image one; ValueError naming `prompts` otherwise."""
    if not info.is_text_to_image:
        if value is not None:
            raise ValueError(f"prompts: {model} is not a text-to-image model ({info.name!r} takes no prompts); "
                             "leave prompts out")
        return None
    value = value if value is not None else DEFAULT_PROMPTS.get(info.benchmark)
    if value is None:
        raise ValueError(f"prompts: {model} is a text-to-image model of {info.name!r}, which has no default prompt "
                         f"set; give a built-in set ({', '.join(EVAL_SETS)}) or a prompt file")
    return load_prompts(value)


def check_seeds(prompts: EvalPrompts, seed: int, n: int) -> None:
    """A built-in set's seeds stay below SEED_LIMIT; ValueError naming `seed`."""
    if prompts.builtin and seed + n > SEED_LIMIT:
        raise ValueError(f"seed: the built-in prompt sets draw scenes 0 .. {SEED_LIMIT - 1}; seed + n is {seed + n}")


def check_grammar(prompts: EvalPrompts) -> None:
    """Alignment reads captions of the shapes grammar: every prompt of a file must parse (a built-in set's do);
    ValueError naming the file and the line."""
    if prompts.file is None:
        return
    where = show_path(prompts.file.source)
    _, text = read_utf8(prompts.file.source, "prompts")
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            parse_caption(line)
        except ValueError as exc:
            raise ValueError(f"prompts: {where} line {number} is not a shapes caption, which alignment needs "
                             f"({str(exc).removeprefix('caption: ')})") from None
