"""Methods say what they need: each config declares whether it needs real data and which student step counts it
supports, each method class its extra constructor inputs. So no code outside core/methods/ and the configs compares
method names (`if method == "dmd2"`), and adding a method never means hunting for such branches."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("app", "workers", "storage", "benchmarks", "core")
EXEMPT = ("core/methods/", "core/method_configs.py")  # where the method keys are defined
COMPARISON = re.compile(r'(==|!=|in) *\(?"(mmd|mmd-instant|emd|dmd2|diff-instruct)"')


def comparisons(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if COMPARISON.search(line)]


def test_the_pattern_finds_method_name_comparisons():
    assert comparisons('x = 1\nif method == "dmd2":\n') == [2]
    assert comparisons('ok = method in ("mmd", "mmd-instant")\nkwargs = {} if m != "emd" else {}\n') == [1, 2]
    assert comparisons('METHODS = {"dmd2": DMD2}\nname = "diff-instruct"\n') == []


def test_no_code_outside_the_methods_compares_method_names():
    found = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(EXEMPT):
                found += [f"{rel}:{n}" for n in comparisons(path.read_text())]
    assert found == [], "ask the config or the method class instead (needs_data, supports_steps, extra_inputs)"


def test_method_classes_declare_their_extra_constructor_inputs():
    """build_method (core/methods/__init__.py) passes a class exactly the inputs it declares."""
    import inspect

    from core.methods import METHODS

    for key, cls in METHODS.items():
        assert set(cls.extra_inputs) <= set(inspect.signature(cls.__init__).parameters), key
    assert {key: cls.extra_inputs for key, cls in METHODS.items() if cls.extra_inputs} == {"dmd2": ("has_data",)}
