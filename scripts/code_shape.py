#!/usr/bin/env python3
"""Module and function lengths of src/polytask: ``python scripts/code_shape.py [--all]``.

Fails (exit 1) on a module over 400 lines in ``compare/`` or a function over 60 lines anywhere,
except the deliberate exceptions below, each with its reason. ``--all`` lists every function
over 40 lines and the longest modules. tests/test_code_shape.py runs it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "polytask"
MAX_FUNCTION = 60
MAX_COMPARE_MODULE = 400
# "module.py:function" -> why it may be longer
EXCEPTIONS: dict[str, str] = {}


def functions(path: Path):
    """(qualified name, first line, line count) of every function and method in ``path``."""
    tree = ast.parse(path.read_text())
    out = []

    def walk(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                out.append((f"{prefix}{child.name}", first, child.end_lineno - first + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(tree)
    return out


def problems() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        n_lines = len(path.read_text().splitlines())
        if rel.startswith("compare/") and n_lines > MAX_COMPARE_MODULE:
            found.append(f"{rel}: {n_lines} lines (compare/ modules: at most {MAX_COMPARE_MODULE})")
        for name, line, length in functions(path):
            if length > MAX_FUNCTION and f"{rel}:{name}" not in EXCEPTIONS:
                found.append(f"{rel}:{line} {name}: {length} lines (at most {MAX_FUNCTION})")
    return found


def listing() -> list[str]:
    rows = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        rows += [(length, f"{length:4d}  {rel}:{line} {name}") for name, line, length in functions(path) if length > 40]
    modules = sorted(((len(p.read_text().splitlines()), p.relative_to(ROOT).as_posix()) for p in ROOT.rglob("*.py")),
                     reverse=True)[:10]
    return (["functions over 40 lines:"] + [r for _, r in sorted(rows, reverse=True)]
            + ["longest modules:"] + [f"{n:4d}  {m}" for n, m in modules])


def main(argv: list[str]) -> int:
    if "--all" in argv:
        print("\n".join(listing()))
    found = problems()
    print("\n".join(found) if found else "code shape OK: no compare/ module over 400 lines, no function over 60 lines")
    for key, why in EXCEPTIONS.items():
        print(f"exception: {key}: {why}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
