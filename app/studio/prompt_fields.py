"""The prompt fields every tab shows for a text-to-image teacher (Runs, Compare, Study): whether the teacher takes
prompts, the prompts box filled from a prompt set, typed prompts and the teacher guidance parsed with errors that
name the field."""

from __future__ import annotations

from core.catalogue import get_teacher_info
from core.eval_prompts import EvalPrompts, showcase_prompts
from core.prompts import prompt_problem
from core.shapes import EVAL_SETS
from core.specs import default_guidance
from workers.submit import MAX_SAMPLE_PROMPTS

PROMPT_SETS = ["typed", *EVAL_SETS]  # the prompt-set dropdown: typed prompts, or the first few of a built-in set


def takes_prompts(ctx, teacher: str | None) -> bool:
    """Whether `teacher` draws from prompts (False for none or an unknown name: the form's own check names it)."""
    try:
        return bool(teacher) and get_teacher_info(teacher, ctx.data_dir).is_text_to_image
    except ValueError:
        return False


def set_prompts(ctx, teacher: str, choice: str | None, k: int = 3) -> str:
    """The prompts box's text for a prompt-set choice: the first `k` prompts of a built-in set, else the teacher's
    fixed card prompts (core.eval_prompts.showcase_prompts), one per line."""
    if choice in EVAL_SETS:
        return "\n".join(p for p in EvalPrompts(choice).prompts(range(k)))
    return "\n".join(showcase_prompts(get_teacher_info(teacher, ctx.data_dir), k))


def prompt_defaults(ctx, teacher: str | None) -> tuple[bool, str, float | None]:
    """(takes prompts, the prompts box's first text, the teacher's default guidance) when a tab's teacher changes."""
    if not takes_prompts(ctx, teacher):
        return False, "", None
    return True, set_prompts(ctx, teacher, "typed"), default_guidance(get_teacher_info(teacher, ctx.data_dir))


def parse_prompts(text: str | None) -> list[str]:
    """The typed prompts, one per line (blank lines skipped, duplicates once); errors name `prompts`."""
    prompts = list(dict.fromkeys(line.strip() for line in str(text or "").splitlines() if line.strip()))
    if not prompts:
        raise ValueError("prompts: type one or more prompts, one per line, or pick a prompt set")
    for i, line in enumerate(prompts, start=1):
        problem = prompt_problem(line)
        if problem:
            raise ValueError(f"prompts: line {i} {problem}")
    if len(prompts) > MAX_SAMPLE_PROMPTS:
        raise ValueError(f"prompts: at most {MAX_SAMPLE_PROMPTS} prompts, got {len(prompts)}")
    return prompts


def parse_guidance(value, default: float | None = None) -> float:
    """The teacher guidance w from a form field (empty: `default`); errors name `guidance`."""
    if value in (None, "") and default is not None:
        return default
    if value in (None, "") or not 0.0 <= float(value) <= 20.0:
        raise ValueError(f"guidance: must be in [0, 20], got {value!r}")
    return float(value)
