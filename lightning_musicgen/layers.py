"""The package's layers, listed once, bottom first, and the checker of its import graph.

A module may import from its own layer or a lower one, never a higher one, and the graph of the
package's modules has no cycle (tests/test_import_layers.py checks both on the source, with `ast`).
A module belongs to the layer of the longest entry naming it or a package above it ("data" holds
every data module but the two listed lower down). Imports counted: module-level and function-level
`import` / `from ... import` of lightning_musicgen.*, and "lightning_musicgen.module:function"
strings (the CLI's verb table). A name imported from a package resolves to the submodule the
package's `__init__` takes it from; a package's `__init__` may import its own submodules in any
layer (it only gathers names, lazily for the Lightning ones), and the package root only does that.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "lightning_musicgen"

LAYERS: list[tuple[str, list[str]]] = [
    ("errors", ["errors"]),
    ("basics", ["compat", "config_dict", "distributed", "flops", "optim", "precision", "reliability", "ema", "layers"]),
    ("audio", ["audio"]),
    ("audio uses", ["media", "metrics"]),
    ("data formats", ["data.shards", "data.text"]),
    ("nn models", ["codec", "lm"]),
    ("model files", ["model_files", "memory"]),
    ("generation", ["generation"]),
    ("data and conversion", ["data", "convert"]),
    ("training callbacks", ["training"]),
    ("LightningModules", ["codec.module", "lm.module", "lm.finetune"]),
    ("commands", ["cli", "generate", "slurm", "__main__"]),
]

_VERB = re.compile(rf"^{PACKAGE}((?:\.\w+)+):\w+$")


@dataclass(frozen=True)
class Edge:
    source: str   # importing module, relative to the package ("codec.model")
    target: str   # imported module
    line: int


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index in `layers` of a module (relative dotted name), or None when no entry names it."""
    best, best_len = None, -1
    for i, (_, entries) in enumerate(layers):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best_len:
                best, best_len = i, len(entry)
    return best


def package_modules(root: str | Path) -> dict[str, Path]:
    """Relative dotted name -> file of every module under the package folder `root` ("" is the root)."""
    root = Path(root)
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = [PACKAGE] + (module.split(".") if module else [])
    if not _is_package(path):
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _raw_imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(absolute module, imported name or None, line) of every import of the package in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, path, node)
            if target.split(".")[0] == PACKAGE:
                found += [(target, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _VERB.match(node.value):
            found.append((PACKAGE + _VERB.match(node.value).group(1), None, node.lineno))
    return found


def import_graph(mods: dict[str, Path]) -> list[Edge]:
    """The import edges between the modules `package_modules` found (self-imports dropped)."""
    raw = {m: _raw_imports(m, p) for m, p in mods.items()}

    def rel(absolute: str) -> str:
        return absolute[len(PACKAGE) + 1:] if absolute != PACKAGE else ""

    def existing(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    # what each package's __init__ gathers: name -> the submodule it imports it from
    gathered = {m: {name: rel(target) for target, name, _ in raw[m] if name is not None}
                for m, p in mods.items() if _is_package(p)}
    edges = set()
    for m, imports in raw.items():
        for target, name, line in imports:
            t = rel(target)
            if name is not None and f"{t}.{name}".lstrip(".") in mods:   # from pkg import submodule
                t = f"{t}.{name}".lstrip(".")
            elif name is not None and t in gathered and name in gathered[t] and gathered[t][name] != t:
                t = gathered[t][name]                                      # from pkg import Name
            t = existing(t)
            if t != m:
                edges.add(Edge(m, t, line))
    return sorted(edges, key=lambda e: (e.source, e.target, e.line))


def _own_facade(edge: Edge, mods: dict[str, Path]) -> bool:
    """A package's __init__ importing one of its own submodules."""
    return _is_package(mods[edge.source]) and (edge.source == "" or edge.target.startswith(edge.source + "."))


def cycles(modules, edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    succ = {m: sorted({e.target for e in edges if e.source == m}) for m in modules}
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in succ:
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ.get(child, []))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def check(mods: dict[str, Path], edges: list[Edge], layers=LAYERS) -> list[str]:
    """One line per problem: a module in no layer, an import into a higher layer, an import cycle."""
    problems = [f"{m or PACKAGE}: in no layer of lightning_musicgen.layers.LAYERS"
                for m in mods if m and layer_of(m, layers) is None]
    for e in edges:
        if _own_facade(e, mods):
            continue
        src, dst = layer_of(e.source, layers), layer_of(e.target, layers)
        if src is not None and dst is not None and dst > src:
            problems.append(f"{e.source}:{e.line} imports {e.target}: layer {layers[dst][0]!r} is above "
                            f"{layers[src][0]!r}")
    graph = [e for e in edges if not _own_facade(e, mods)]
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(list(mods), graph)]
    return problems
