"""The package's imports run one way, and its modules stay small (issue 21).

Every module of finercut_tui sits in a layer; a module may import (at the top or inside a function,
both count) only from its own layer or a lower one, and no set of modules imports each other in a
cycle. The layers, lowest first, are the architecture README draws.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "finercut_tui"

# lowest first; a module is placed by its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("domain",),  # the search as data: spec, methods, pins, records, events, sublayer ids
    ("data", "model"),  # tokens; the torch model and its surgery
    ("eval",),  # perplexity and lm-eval on a model
    ("session",),  # the YAML session (domain records only)
    ("search",),  # the engine, scoring, jobs, torchrun
    ("curves",),  # what is shown of sessions, torch-free: curves, then compare, the grid's view model,
    ("compare",),  # and show's report on top of them
    ("layer_map",),
    ("report",),
    ("export", "heal", "repair", "bakeoff"),  # what is made of searches: exports, heals, repairs, bake-offs
    ("commands", "tui"),  # the faces
    ("cli", "__init__"),
    ("__main__",),
]
# a face may use another face's helpers only in this direction (the app's command opens the app)
SAME_LAYER_ALLOWED = {("commands", "tui"), ("tui", "commands")}
MAX_MODULE_LINES = 450
MAX_LONG_FUNCTIONS = 2  # functions over 60 lines, in the whole package
LONG_FUNCTION = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finercut_tui"):
            base = node.module.removeprefix("finercut_tui").lstrip(".")
            names = [f"{base}.{a.name}".lstrip(".") for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [
                a.name.removeprefix("finercut_tui.") for a in node.names if a.name.startswith("finercut_tui.")
            ]
        for name in names:
            if name in modules:  # the module itself, or a submodule imported by name
                found.add(name)
    return found


def _group(module: str) -> str:
    return module.split(".")[0] if module else "__init__"


def _layer(module: str) -> int:
    group = _group(module)
    for i, layer in enumerate(LAYERS):
        if group in layer:
            return i
    raise AssertionError(f"finercut_tui.{module} is in no layer: add its package to LAYERS")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_runs_back_up():
    graph = _graph()
    wrong = []
    for module, deps in graph.items():
        for dep in deps:
            if _group(dep) == _group(module) or dep == "":
                continue
            mine, theirs = _layer(module), _layer(dep)
            if theirs > mine or (theirs == mine and (_group(module), _group(dep)) not in SAME_LAYER_ALLOWED):
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports that run back up (or sideways):\n" + "\n".join(sorted(wrong))


def test_no_modules_import_each_other():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_checker_sees_a_cycle_and_a_backward_import(tmp_path, monkeypatch):
    """The two checks above would fail on a package that breaks them."""
    pkg = tmp_path / "finercut_tui"
    (pkg / "domain").mkdir(parents=True)
    (pkg / "search").mkdir()
    (pkg / "domain" / "__init__.py").write_text("")
    (pkg / "search" / "__init__.py").write_text("")
    (pkg / "domain" / "a.py").write_text("from finercut_tui.search.b import x\n")
    (pkg / "search" / "b.py").write_text("def f():\n    from finercut_tui.domain import a\n")
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    graph = _graph()
    assert graph["domain.a"] == {"search.b"} and graph["search.b"] == {"domain.a", "domain"}
    try:
        test_no_import_runs_back_up()
    except AssertionError as exc:
        assert "domain.a -> search.b" in str(exc)
    else:
        raise AssertionError("the backward import was not seen")
    try:
        test_no_modules_import_each_other()
    except AssertionError as exc:
        assert "domain.a" in str(exc)
    else:
        raise AssertionError("the cycle was not seen")


def test_modules_and_functions_stay_small():
    big = []
    long = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            big.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > LONG_FUNCTION:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
    assert len(long) <= MAX_LONG_FUNCTIONS, f"more than {MAX_LONG_FUNCTIONS} functions over 60 lines: {long}"
