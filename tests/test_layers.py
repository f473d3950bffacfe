"""The one-way import rule (docs/architecture.md#layers-and-the-import-rule): app -> storage (+ torch-free core specs,
+ workers.local lazily), workers -> core + storage, core -> nothing of ours, storage -> nothing of ours. Checked on the
source with `ast` (top-level and nested imports), and by importing the web-side modules in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """(imported name, line, inside a function body) for every import in `source`, relative ones resolved.

    `from a.b import c` yields 'a.b.c' (c may be a submodule or an attribute; both belong to a.b)."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = package[: len(package) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.extend((f"{base}.{alias.name}" if base else alias.name, child.lineno, in_function)
                             for alias in child.names)
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _layer_imports(layer: str):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    for path in files:
        for name, line, nested in imports(path.read_text(), _module_name(path), path.name == "__init__.py"):
            yield f"{path.relative_to(ROOT)}:{line}", name, nested


def test_import_scanner_sees_nested_and_relative_imports():
    src = ("import os\nfrom core.specs import X\n"
           "def f():\n    import torch\n    from workers.local import sample_model\n"
           "class C:\n    def g(self):\n        from . import sibling\n        from ..storage import settings\n")
    assert imports(src, "app.cli") == [("os", 1, False), ("core.specs.X", 2, False), ("torch", 4, True),
                                       ("workers.local.sample_model", 5, True), ("app.sibling", 8, True),
                                       ("storage.settings", 9, True)]
    assert imports("from .imported import load\n", "core.teachers", is_package=True) == \
        [("core.teachers.imported.load", 1, False)]


def test_core_imports_nothing_of_the_app():
    banned = ("app", "workers", "storage", "gradio", "celery", "sqlalchemy")
    bad = [(where, name) for where, name, _ in _layer_imports("core") if _under(name, banned)]
    assert bad == []


def test_storage_imports_no_core_app_or_workers():
    bad = [(where, name) for where, name, _ in _layer_imports("storage") if _under(name, ("core", "app", "workers"))]
    assert bad == []


def test_app_stays_torch_free():
    bad = []
    for where, name, nested in _layer_imports("app"):
        if _under(name, ("torch", "diffusers", "torchvision")):
            bad.append((where, name))
        elif _under(name, ("core",)) and not _under(name, ("core.specs", "core.catalogue", "core.method_specs",
                                                                    "core.eval_specs", "core.refs", "core.study",
                                                                    "core.method_configs", "core.knobs", "core.prompts",
                                                                    "core.datasets", "core.text_inputs", "core.eval_prompts",
                                                                    "core.shapes")):
            bad.append((where, name))
        elif _under(name, ("workers.local",)) and not nested:
            bad.append((where, f"{name} at module level (import it inside the function that needs it)"))
    assert bad == []


def test_workers_do_not_import_the_app():
    bad = [(where, name) for where, name, _ in _layer_imports("workers") if _under(name, ("app", "gradio"))]
    assert bad == []


def test_web_side_modules_load_no_torch():
    code = ("import app.cli, app.studio.server, core.specs, core.catalogue, core.method_specs, core.refs, storage.settings; "
            "import core.prompts, core.datasets, core.text_inputs, workers.submit; "
            "import sys; "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
