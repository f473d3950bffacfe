"""The New-run form's knobs, rendered from a method's config dataclass (core/method_specs.py): one input per field,
its value from the chosen preset, its help text from the field's why-comment in the source."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any

from core.method_specs import METHOD_CONFIGS, PRESET_CHANGES, WEIGHTINGS_MMD, WEIGHTINGS_VSD, build_method_config

# Fields whose valid values are a closed set: a dropdown rather than free text.
CHOICES: dict[str, tuple[str, ...]] = {"lr_schedule": ("constant", "linear"), "renoise": ("conditional", "marginal"),
                                       "noise_cancel": ("exact", "injected", "none")}
SEPARATE = ("student_steps",)  # a field of its own on the form, not a knob


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str            # "int", "float", "bool", "str"
    value: Any
    info: str
    choices: tuple[str, ...] = ()


@functools.cache
def why_comments(method: str) -> dict[str, str]:
    """field -> the text after '# why:' on its line in the config class's source."""
    source = inspect.getsource(METHOD_CONFIGS[method])
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+):\s*\w+\s*=.*?#\s*why:\s*(.*)$", source, re.M)}


def presets(method: str) -> list[str]:
    return list(PRESET_CHANGES[method])


def _choices(method: str, name: str) -> tuple[str, ...]:
    if name == "weighting":
        return WEIGHTINGS_MMD if method in ("mmd", "mmd-instant") else WEIGHTINGS_VSD
    return CHOICES.get(name, ())


def knobs(method: str, preset: str) -> list[Knob]:
    """Every knob of the method under the preset, in declaration order; ValueError names a bad method or preset."""
    config = build_method_config(method, preset=preset)
    docs = why_comments(method)
    out = []
    for f in dataclasses.fields(config):
        if f.name in SEPARATE:
            continue
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        out.append(Knob(f.name, kind, getattr(config, f.name), docs.get(f.name, ""), _choices(method, f.name)))
    return out


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
