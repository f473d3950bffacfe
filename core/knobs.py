"""One mechanism for every validated config: frozen pydantic models whose fields carry their own help.

`knob(default, source, why, ge=..., choices=...)` declares a field with its why-text as the description, its
provenance (paper, code, derived or choice) and its bounds or choices. Validation enforces exactly that metadata, and
the help that reads it (the studio's form, `distill --help-knobs`, the knob tables of docs/methods.md) shows what is
enforced. A bad value is a plain ValueError naming the config and the field, `dmd2: ttur_ratio must be an integer
>= 1, got 0`, never pydantic's multi-line report. Torch-free: the web app imports it.
"""

from __future__ import annotations

from typing import Any, ClassVar, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

SOURCES = ("paper", "code", "derived", "choice")
# Training precision (core.stepping): fp32, or bf16 autocast with fp32 master weights. fp16 is refused, with FP16_REFUSAL.
PRECISIONS = ("fp32", "bf16")
FP16_REFUSAL = ("fp16 is not supported: its 5-bit exponent overflows in these losses without loss scaling, which the "
                "loop does not do; use bf16 (same memory and speed on GPUs that have it) or fp32")
_BOUNDS = ("gt", "ge", "lt", "le", "min_length", "max_length")


def knob(default: Any, source: str, why: str = "", *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, choices: tuple[str, ...] = (),
         min_length: int | None = None, max_length: int | None = None, strict: bool | None = None) -> Any:
    """A config field: its default, where that default comes from (one of SOURCES), why, and the values it accepts."""
    if source not in SOURCES:
        raise ValueError(f"knob: source must be one of {', '.join(SOURCES)}, got {source!r}")
    extra: dict[str, Any] = {"source": source}
    if choices:
        extra["enum"] = list(choices)
    return Field(default, description=why, ge=ge, gt=gt, le=le, lt=lt, min_length=min_length, max_length=max_length,
                 strict=strict, json_schema_extra=extra)


# -- Reading the metadata -------------------------------------------------------------------------------------

def source(info: FieldInfo) -> str:
    return (info.json_schema_extra or {}).get("source", "")


def why(info: FieldInfo) -> str:
    return info.description or ""


def choices(info: FieldInfo) -> tuple[str, ...]:
    return tuple((info.json_schema_extra or {}).get("enum", ()))


def bounds(info: FieldInfo) -> dict[str, Any]:
    """{'ge': 0, 'lt': 1, ...}: read back from the constraints pydantic enforces, so help and checks cannot differ."""
    return {name: getattr(m, name) for m in info.metadata for name in _BOUNDS if hasattr(m, name)}


def kind(info: FieldInfo) -> str:
    """'int', 'float', 'bool', 'str' or 'tuple': the type a KEY=VALUE override or a form input is read as."""
    return (get_origin(info.annotation) or info.annotation).__name__


def _interval(b: dict[str, Any]) -> str:
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[0]}{hi[1]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[1] == ']' else '<'} {hi[0]}"
    return ""


def requirement(info: FieldInfo) -> str:
    """The accepted values in words: 'an integer >= 1', 'in [0, 1)', '> 0', 'one of a, b', 'non-empty'."""
    b, k = bounds(info), kind(info)
    if choices(info):
        return f"one of {', '.join(choices(info))}"
    if "min_length" in b:
        return "non-empty"
    if k == "int":
        return "an integer" + (f" >= {b['ge']}" if "ge" in b else "")
    if k == "bool":
        return "true or false"
    if k == "float":
        return _interval(b) or "a number"
    return f"a {k}"


def rule(info: FieldInfo) -> str:
    """The error text for a value the field refuses: 'must be an integer >= 1'."""
    return "must not be empty" if "min_length" in bounds(info) else f"must be {requirement(info)}"


def knob_rows(cls: type[KnobModel]) -> list[dict[str, Any]]:
    """One plain row per field, in declaration order: what the help, the form and the docs show."""
    return [{"name": name, "type": kind(info), "default": info.default, "accepts": requirement(info),
             "choices": list(choices(info)), "source": source(info), "why": why(info)}
            for name, info in cls.model_fields.items()]


# -- The base model -------------------------------------------------------------------------------------------

class KnobModel(BaseModel):
    """A frozen config of knobs. Strict types: a bool is not an int, 2.0 is not an integer, "1" is not a number.

    Subclasses set `key` (the prefix of their error messages), declare fields with `knob()`, and add a model
    validator only for a rule that ties fields together (raising ValueError with its full message); `rules` says
    those rules in words for the help. `to_dict`/`from_dict` round-trip through plain (JSON) dicts; `replace`
    returns a validated copy.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    key: ClassVar[str] = ""
    rules: ClassVar[tuple[str, ...]] = ()
    retired: ClassVar[frozenset[str]] = frozenset()  # keys from_dict skips: stored by older runs, read by nothing

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ValueError(type(self)._message(exc, data)) from None

    @model_validator(mode="before")
    @classmethod
    def _refuse_fp16(cls, data: Any) -> Any:
        # Its own message: "one of fp32, bf16" alone would not say why the common choice is missing.
        if isinstance(data, dict) and data.get("precision") == "fp16" and "precision" in cls.model_fields:
            raise ValueError(f"{cls.key}: precision {FP16_REFUSAL}")
        return data

    @field_validator("*")
    @classmethod
    def _one_of_choices(cls, value: Any, info: ValidationInfo) -> Any:
        allowed = choices(cls.model_fields[info.field_name])
        if allowed and value not in allowed:
            raise ValueError("not a choice")  # replaced by the field's rule in _message
        return value

    @classmethod
    def _message(cls, exc: ValidationError, data: dict[str, Any]) -> str:
        errors = exc.errors()
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            return cls._unknown_message(unknown)
        first = errors[0]
        if not first["loc"]:  # a cross-field rule of a model validator: its own message
            return str(first["ctx"]["error"])
        name = str(first["loc"][0])
        return f"{cls.key}: {name} {rule(cls.model_fields[name])}, got {data.get(name, first['input'])!r}"

    @classmethod
    def _unknown_message(cls, unknown: list[str]) -> str:
        return f"{cls.key}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(cls.model_fields))})"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**{k: v for k, v in d.items() if k not in cls.retired})

    def replace(self, **changes: Any):
        """A validated copy with `changes` applied."""
        return type(self)(**{**dict(self), **changes})
