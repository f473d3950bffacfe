"""Model references: the one parser and formatter of the strings that name a model, and its default step count.

    REF   teacher:NAME[@STEPS]   a teacher sampled at STEPS DDIM steps (default TEACHER_STEPS)
          run:ID[@STEPS]         a distill run's student sampled at STEPS steps (default: the steps it was distilled for)
          PATH[@STEPS]           a student folder written by `distill` (student.json + model.safetensors)

For every kind the number after '@' is a sampler step count, never a checkpoint: a run's training step travels beside
the reference (a sample spec's `checkpoint`, an image's `checkpoint` column), so stored rows keep the bare `run:ID`.
A folder's '@' that is not followed by digits is part of its name (`me@home`). Torch-free: the web app imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

TEACHER_STEPS = 50  # why: the studio's default teacher sampler, DDIM at 50 steps
MAX_STEPS = 1000    # why: the samplers' schedules have 1000 training timesteps
KINDS = ("teacher", "run", "folder")

Kind = Literal["teacher", "run", "folder"]


@dataclass(frozen=True)
class ModelRef:
    """A parsed REF: kind "teacher" (target: the name), "run" (target: the id's digits) or "folder" (target: the path),
    and the step count after '@' (None: the model's own default, see default_steps)."""

    kind: Kind
    target: str
    steps: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.target or (self.kind == "run" and not self.target.isdigit()):
            raise ValueError(f"model: {self.kind} reference with a bad target {self.target!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or not 1 <= self.steps <= MAX_STEPS):
            raise ValueError(f"model: bad step count {self.steps!r} (an integer in [1, {MAX_STEPS}])")

    @classmethod
    def teacher(cls, name: str, steps: int | None = None) -> ModelRef:
        return cls("teacher", name, steps)

    @classmethod
    def run(cls, run_id: int, steps: int | None = None) -> ModelRef:
        return cls("run", str(int(run_id)), steps)

    @classmethod
    def folder(cls, path: Path | str, steps: int | None = None) -> ModelRef:
        return cls("folder", str(path), steps)

    @property
    def is_teacher(self) -> bool:
        return self.kind == "teacher"

    @property
    def name(self) -> str:
        """The teacher's name."""
        self._expect("teacher")
        return self.target

    @property
    def run_id(self) -> int:
        self._expect("run")
        return int(self.target)

    @property
    def path(self) -> Path:
        """The student folder, as written (relative paths stay relative)."""
        self._expect("folder")
        return Path(self.target)

    @property
    def text(self) -> str:
        """The REF string: what parse_ref reads back and what stored rows hold."""
        head = self.target if self.kind == "folder" else f"{self.kind}:{self.target}"
        return head if self.steps is None else f"{head}@{self.steps}"

    def at(self, steps: int | None) -> ModelRef:
        """The same model at another step count (None: its default)."""
        return replace(self, steps=steps)

    def __str__(self) -> str:
        return self.text

    def _expect(self, kind: str) -> None:
        if self.kind != kind:
            raise ValueError(f"model: {self.text!r} is not a {kind} reference")


def parse_ref(ref: str) -> ModelRef:
    """teacher:NAME[@STEPS], run:ID[@STEPS] or a folder path[@STEPS]; ValueError naming `model` otherwise."""
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"model: {ref!r} is empty; give teacher:NAME[@STEPS], run:ID or a student folder")
    kind, sep, rest = ref.partition(":")
    if not sep or kind not in ("teacher", "run"):
        kind, rest = "folder", ref
    target, at, steps_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if kind == "folder" and at and not steps_text.isdigit():
        target, at = rest, ""  # an '@' that is part of the folder's name
    steps = None
    if at:
        if not steps_text.isdigit() or not 1 <= int(steps_text) <= MAX_STEPS:
            raise ValueError(f"model: {ref!r} has a bad step count {steps_text!r} (an integer in [1, {MAX_STEPS}])")
        steps = int(steps_text)
    if kind == "teacher" and not target:
        raise ValueError(f"model: {ref!r} names no teacher (teacher:NAME[@STEPS])")
    if kind == "run" and not target.isdigit():
        raise ValueError(f"model: {ref!r} is not run:ID with a numeric id")
    return ModelRef(kind, target, steps)


def student_steps(spec: Mapping[str, Any]) -> int:
    """The step count a student was distilled for: from its student.json (config.student_steps) or from a distill
    run's stored spec (student_steps; a run queued without one has its method preset's)."""
    if "config" in spec:
        return int(spec["config"]["student_steps"])
    if spec.get("student_steps"):
        return int(spec["student_steps"])
    # Imported here: method_specs is the method configs' module, needed only for runs that left the count to a preset.
    from core.method_specs import build_method_config

    config = build_method_config(spec["method"], preset=spec.get("preset") or "default", sets=tuple(spec.get("sets") or ()))
    return int(config.student_steps)


def default_steps(ref: ModelRef, student_spec: Mapping[str, Any] | None = None) -> int:
    """The step count to sample `ref` at: its @STEPS, else TEACHER_STEPS for a teacher, else the student's own
    (student_steps of its spec, which a student reference must then pass)."""
    if ref.steps is not None:
        return ref.steps
    if ref.is_teacher:
        return TEACHER_STEPS
    if student_spec is None:
        raise ValueError(f"model: {ref.text!r} is a student; its step count comes from its spec")
    return student_steps(student_spec)
