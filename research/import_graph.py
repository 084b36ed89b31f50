"""The import graph of the installed package, from a checkout: files and lines per folder, imports between
folders, and import cycles between modules (imports inside functions count; those under `if TYPE_CHECKING:`
do not, as they never run).

    python research/import_graph.py [ROOT]          # ROOT: a checkout (default: the one this file is in)

Module names map to files through pyproject.toml's [tool.setuptools.package-dir] ("vitshrink.compressor" ->
compressor/), so the same script reads the tree before and after files move. stdlib only, Python >= 3.11.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter, defaultdict
from pathlib import Path

import tomllib


def modules(root: Path) -> dict[str, Path]:
    """Installed module name -> file, for every .py under the mapped package folders."""
    package_dir = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = {}
    for package, folder in sorted(package_dir.items(), key=lambda kv: -len(kv[0])):  # longest first
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            name = ".".join((package, *parts))
            if name in found or any(str(p) in ("experiments", "__pycache__") for p in rel.parts):
                continue  # a longer mapping owns it; benchmarks/experiments is not installed
            found[name] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The package modules `path` imports (at the top or inside functions); `from X import Y` counts X.Y when a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` but the bodies of `if TYPE_CHECKING:` (their `else:` runs)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    known = modules(root)
    folder = {m: p.relative_to(root).parent.as_posix() for m, p in known.items()}
    top = {m: p.relative_to(root).parts[0] for m, p in known.items()}
    graph = {m: imports(p, m, known) for m, p in known.items()}

    print("files and lines per folder (installed modules):")
    per = defaultdict(lambda: [0, 0])
    for m, p in known.items():
        per[folder[m]][0] += 1
        per[folder[m]][1] += len(p.read_text().splitlines())
    for f, (n, lines) in sorted(per.items()):
        print(f"  {f + '/':28s} {n:3d} files {lines:6d} lines")

    print("imports between top folders (file -> file pairs):")
    pairs = Counter((top[a], top[b]) for a in graph for b in graph[a] if top[a] != top[b])
    for (a, b), n in sorted(pairs.items()):
        print(f"  {a + '/':12s} -> {b + '/':12s} {n:3d}")
    print("imports from compressor/ into benchmarks/:")
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if top[a] == "compressor" and top[b] == "benchmarks":
                print(f"  {known[a].relative_to(root)} -> {known[b].relative_to(root)}")
    found = cycles(graph)
    print(f"import cycles between modules: {len(found)}")
    for comp in found:
        print("  " + ", ".join(str(known[m].relative_to(root)) for m in comp))


if __name__ == "__main__":
    main()
