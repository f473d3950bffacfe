"""The New-run form's knobs, rendered from a method's config (core/method_configs.py): one input per field, its value
from the chosen preset, its help text, dropdown choices and bounds from the field's own metadata (core/knobs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo

from core.knobs import bounds, choices, kind, requirement, source, why
from core.method_specs import METHOD_CONFIGS, PRESET_CHANGES, build_method_config

SEPARATE = ("student_steps",)  # a field of its own on the form, not a knob


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str            # "int", "float", "bool", "str"
    value: Any
    info: str
    choices: tuple[str, ...] = ()


def presets(method: str) -> list[str]:
    return list(PRESET_CHANGES[method])


def help_text(info: FieldInfo) -> str:
    """'[paper] r = 1 unstable, r = 10 stable but slow · an integer >= 1': provenance, why, and a number's bounds."""
    text = f"[{source(info)}] {why(info)}".rstrip()
    if kind(info) in ("int", "float") and bounds(info):
        text += f" · {requirement(info)}"
    return text


def knobs(method: str, preset: str) -> list[Knob]:
    """Every knob of the method under the preset, in declaration order; ValueError names a bad method or preset."""
    config = build_method_config(method, preset=preset)
    return [Knob(name, kind(info), getattr(config, name), help_text(info), choices(info))
            for name, info in METHOD_CONFIGS[method].model_fields.items() if name not in SEPARATE]


def _same(kind: str, given: Any, default: Any) -> bool:
    if kind == "float":
        return float(given) == float(default)
    return given == default


def knob_sets(method: str, preset: str, values: dict[str, Any]) -> tuple[str, ...]:
    """KEY=VALUE overrides for the knobs that differ from the preset; errors name the knob."""
    sets = []
    for knob in knobs(method, preset):
        if knob.name not in values:
            continue
        given = values[knob.name]
        if given is None or (isinstance(given, str) and not given.strip() and knob.kind != "str"):
            raise ValueError(f"{knob.name}: a value is required")
        if knob.kind == "int":
            if isinstance(given, float) and not given.is_integer():
                raise ValueError(f"{knob.name}: must be a whole number, got {given:g}")
            given = int(given)
        if not _same(knob.kind, given, knob.value):
            sets.append(f"{knob.name}={str(given).lower() if knob.kind == 'bool' else given}")
    return tuple(sets)
