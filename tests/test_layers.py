"""The import graph of ``src/polytask`` has no cycle, and no lower layer imports a higher one.

Layers, top to bottom (docs/architecture.md):

    entry points   cli, compare/, export, train (+ train_folder, train_faults, train_state), predict, serve/,
                   the package root
    model          model, evaluate, dataset, gradients, steps
    components     architectures/, weighting/, tasks/, sampling, draws
    foundation     backbones/, data/, config, run_folder, files, state_io, metrics, errors,
                   registry, batching, packing, report, html_report, tracking, prefetch, sharding,
                   _version

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "polytask"

LAYERS = {
    3: ["polytask", "cli", "compare", "export", "train", "train_folder", "train_faults", "train_state", "predict",
        "predict_images", "serve", "affinity", "adapt"],
    2: ["model", "evaluate", "dataset", "gradients", "steps"],
    1: ["architectures", "weighting", "tasks", "sampling", "draws"],
    0: ["backbones", "data", "config", "run_folder", "files", "state_io", "metrics", "errors", "registry", "devices",
        "preprocess", "precision", "interrupts",
        "batching", "packing", "report", "report_dense", "html_report", "tracking", "prefetch", "sharding", "_version"],
}
LAYER_NAMES = {3: "entry points", 2: "model", 1: "components", 0: "foundation"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The polytask modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    for layer, names in LAYERS.items():
        if key in names:
            return layer
    raise AssertionError(f"module {name} is in no layer: add it to LAYERS here and to docs/architecture.md")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_lower_layer_imports_a_higher_one():
    wrong = [f"{a} ({LAYER_NAMES[layer_of(a)]}) imports {b} ({LAYER_NAMES[layer_of(b)]})"
             for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not wrong, "\n".join(wrong)


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("g, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder_finds_known_cycles(g, expected):
    assert find_cycles(g) == expected


def test_import_resolution_counts_imports_inside_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from polytask.train import train\n    from polytask import metrics as M\n")
    known = {"polytask": src, "polytask.train": src, "polytask.metrics": src, "polytask.m": src}
    assert imports("polytask.m", src, known) == {"polytask.train", "polytask.metrics"}
