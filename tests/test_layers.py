"""The package's imports run one way, and never in a circle (walked with ``ast``, nothing imported).

The layers, top to bottom (a module may import its own layer and the layers below it):

    cli -> train -> reports -> api -> rendering -> aggregation -> recording -> models -> reversible -> vocabulary

Every ``import`` statement counts: at module level, inside functions (lazy imports) and under
``if TYPE_CHECKING:``, because each one is a dependency the code states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "memprof"

#: (layer, module prefixes), top first.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("memprof.cli", "memprof.__main__")),
    ("train", ("memprof.train",)),
    ("reports", ("memprof.reports",)),
    ("api", ("memprof.api",)),
    ("rendering", ("memprof.rendering",)),
    ("aggregation", ("memprof.aggregation",)),
    ("recording", ("memprof.recording",)),
    ("models", ("memprof.models",)),
    ("reversible", ("memprof.reversible",)),
    ("vocabulary", ("memprof.vocabulary", "memprof.validation", "memprof.errors", "memprof.units",
                    "memprof.seed", "memprof.version", "memprof.cache")),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str | None:
    best = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (name, prefix)
    return best[0] if best else None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The memprof modules a ``from ... import ...`` names (a submodule where the name is one)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("memprof"):
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the statements under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    """(imported memprof module, line, only for type checking) for every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "memprof"]
        elif isinstance(node, ast.ImportFrom):
            targets = _resolve(module, path.name == "__init__.py", node)
        else:
            continue
        found += [(t, node.lineno, node.lineno in typing_only) for t in targets]
    return found


GRAPH: dict[str, list[tuple[str, int, bool]]] = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    lost = [m for m in MODULES if m != "memprof" and _layer(m) is None]
    assert not lost, f"modules outside every layer (add them to LAYERS): {lost}"


def test_imports_run_one_way():
    against = []
    for module, targets in GRAPH.items():
        if module == "memprof":  # the package root re-exports the public API of every layer
            continue
        for target, line, _ in targets:
            src, dst = _layer(module), _layer(target)
            if src is None:  # reported by test_every_module_has_a_layer
                continue
            if target == "memprof":
                against.append(f"{module}:{line} imports the package root")
            elif dst is None:
                against.append(f"{module}:{line} imports {target}, which is in no layer")
            elif RANK[dst] < RANK[src]:
                against.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    assert not against, "imports against cli -> ... -> vocabulary:\n" + "\n".join(against)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import): Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in targets if t in MODULES} for m, targets in GRAPH.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_rendering_never_imports_recording():
    """rendering/__init__.py promises it: results are drawn from records, never from hooks."""
    bad = [f"{m}:{line} imports {t}" for m, targets in GRAPH.items() if _in(m, "memprof.rendering")
           for t, line, _ in targets if _in(t, "memprof.recording")]
    assert not bad, "\n".join(bad)


def test_aggregation_imports_recording_only_for_types():
    """aggregation/__init__.py promises it: no hook code runs there, it only reads records."""
    bad = [f"{m}:{line} imports {t}" for m, targets in GRAPH.items() if _in(m, "memprof.aggregation")
           for t, line, typing_only in targets if _in(t, "memprof.recording") and not typing_only]
    assert not bad, "\n".join(bad)


def test_type_checking_imports_are_seen():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nimport y\n")
    assert _type_checking_lines(tree) == {3}


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"a"}}, [["a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder(graph, expected):
    """The cycle check itself can fail."""
    assert _cycles(graph) == expected


def test_layer_rule_can_fail():
    """A lazy upward import inside a function is caught (the walk sees function bodies)."""
    assert _layer("memprof.rendering.plots") == "rendering"
    assert RANK["recording"] > RANK["rendering"]
    tree = ast.parse("def f():\n    from ..recording import attribution\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _resolve("memprof.rendering.plots", False, node) == ["memprof.recording.attribution"]
