"""The package's shape, read from its source with `ast` (nothing is imported): no import cycle among
annot modules, no module over MAX_LINES lines, no private name used across modules, and `annot bench`
kept out of the core.

What counts as an import: every `import annot...` / `from annot... import ...` anywhere in a module,
at module level or inside a function (a function-level import breaks a cycle at import time, not
in the design: both modules still need each other). An import names the module it reaches; the
package `__init__` a Python import runs on the way is not counted (ours only re-export).

Each test prints the full list of offenders (module, line, what) so a failure says what to change.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "annot"
MAX_LINES = 600


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported annot module
    line: int
    names: tuple[str, ...]  # names taken from the target (`from target import a, b`); () for `import target`


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = modules()


def resolve(dotted: str) -> str | None:
    """The annot module a dotted name reaches: its longest prefix that is a module."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in MODULES:
            return name
    return None


def absolute(node: ast.ImportFrom, source: str) -> str:
    """The module an ImportFrom names, relative imports made absolute."""
    if not node.level:
        return node.module or ""
    package = source if MODULES[source].name == "__init__.py" else source.rsplit(".", 1)[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def parse(source: str, text: str | None = None) -> ast.Module:
    return ast.parse(MODULES[source].read_text(encoding="utf-8") if text is None else text)


def imports_of(source: str, text: str | None = None) -> list[Import]:
    tree = parse(source, text)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target:
                    out.append(Import(source, target, node.lineno, ()))
        elif isinstance(node, ast.ImportFrom):
            mod = absolute(node, source)
            if resolve(mod) is None:
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"  # `from annot.bench import clock` reaches the submodule
                if sub in MODULES:
                    out.append(Import(source, sub, node.lineno, ()))
                else:
                    out.append(Import(source, resolve(mod), node.lineno, (alias.name,)))
    return out


def all_imports() -> list[Import]:
    return [i for m in MODULES for i in imports_of(m) if i.target != i.source]


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges:
        graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, text: str | None = None) -> list[str]:
    """`from annot.x import _y` and `<annot.x>._y` (through `import annot.x [as m]` or `from annot import x`)."""
    tree = parse(source, text)
    bound: dict[str, str] = {}  # local name -> annot module
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if resolve(alias.name):
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and resolve(absolute(node, source)):
            mod = absolute(node, source)
            for alias in node.names:
                if f"{mod}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{mod}.{alias.name}"
                elif is_private(alias.name) and resolve(mod) != source:
                    out.append(f"{source}:{node.lineno}: from {mod} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            chain, base = [], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                dotted = ".".join([bound[base.id], *reversed(chain)])
                if dotted in MODULES and dotted != source:
                    out.append(f"{source}:{node.lineno}: {dotted}.{node.attr}")
    return sorted(out, key=lambda x: int(x.split(":")[1]))


def simple_cycles(comp: list[str], edges: list[Import]) -> list[list[str]]:
    """Every elementary cycle inside one strongly connected component, each from its smallest module."""
    graph = {m: sorted({e.target for e in edges if e.source == m and e.target in comp}) for m in comp}
    out = []

    def walk(start: str, path: list[str]) -> None:
        for w in graph[path[-1]]:
            if w == start:
                out.append(path + [start])
            elif w > start and w not in path:
                walk(start, path + [w])

    for start in sorted(comp):
        walk(start, [start])
    return out


# -- the checks ---------------------------------------------------------------------------------------


def test_the_checker_sees_the_package():
    assert {"annot", "annot.wrap", "annot.run", "annot.bench", "annot.bench.runner"} <= set(MODULES)
    edges = {(e.source, e.target) for e in all_imports()}
    assert ("annot.run", "annot.wrap") in edges  # module level
    assert ("annot.cli", "annot.bench") in edges  # inside a function
    assert ("annot.bench", "annot.bench.clock") in edges


def test_cycle_detection_finds_cycles_through_function_level_imports():
    text = "import json\nfrom annot.wrap import get_wrapper\n\ndef f():\n    from annot.run import run\n"
    found = imports_of("annot.sweep", text)
    assert [(e.target, e.line) for e in found] == [("annot.wrap", 2), ("annot.run", 5)]
    a, b, c = "annot.wrap", "annot.run", "annot.sweep"
    edges = [Import(a, b, 1, ()), Import(b, c, 5, ()), Import(c, a, 9, ())]
    assert cycles(edges) == [sorted([a, b, c])]
    assert simple_cycles(sorted([a, b, c]), edges) == [[b, c, a, b]]
    assert cycles(edges[:2]) == []


def test_private_use_detection():
    text = ("from annot.train import _latest, train\nimport annot.bench.clock as c\nfrom annot import probe\n"
            "c._mm_operands()\nprobe._Req\nprobe.__name__\nfrom annot.errors import AnnotError\n")
    assert private_uses("annot.run", text) == ["annot.run:1: from annot.train import _latest",
                                               "annot.run:4: annot.bench.clock._mm_operands",
                                               "annot.run:5: annot.probe._Req"]


def test_no_import_cycle():
    edges = all_imports()
    found = cycles(edges)
    lines = []
    for comp in found:
        lines.append("modules that import each other: " + ", ".join(comp))
        lines += ["  cycle: " + " -> ".join(c) for c in simple_cycles(comp, edges)]
        lines += [f"    {e.source}:{e.line} imports {e.target}" + (f" ({', '.join(e.names)})" if e.names else "")
                  for e in sorted(edges, key=lambda e: (e.source, e.line)) if e.source in comp and e.target in comp]
    print("\n".join(lines))
    assert not found, "import cycles among annot modules:\n" + "\n".join(lines)


def test_no_module_over_the_line_limit():
    long = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    over = sorted((n, m) for m, n in long.items() if n > MAX_LINES)
    listing = "\n".join(f"    {m}: {n} lines" for n, m in reversed(over))
    print(listing)
    assert not over, f"modules over {MAX_LINES} lines (split them by concern):\n{listing}"


def test_no_private_name_used_across_modules():
    found = [use for m in MODULES for use in private_uses(m)]
    print("\n".join(found))
    assert not found, ("private names used across modules (make them public or move the code):\n    "
                       + "\n    ".join(found))


def test_bench_is_kept_out_of_the_core():
    """Only the CLI reaches annot.bench: the pipeline never depends on the benchmark."""
    users = sorted({f"{e.source}:{e.line}" for e in all_imports()
                    if e.target.split(".")[:2] == ["annot", "bench"] and e.source.split(".")[:2] != ["annot", "bench"]
                    and e.source != "annot.cli"})
    assert not users, f"annot.bench imported by core modules: {users}"
