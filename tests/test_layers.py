"""Dependencies point one way: model core -> data and runtimes -> scoring -> planning -> training -> jobs -> CLI/API.

Every `vitshrink.*` import in the product, at the top of a file or inside a function, is read from the source
(nothing is imported): a module may import its own layer or a layer below it, never one above; the planner
never imports a runtime (what must be timed is handed to it); no two modules import each other, directly or
round a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"vitshrink": "vitshrink", "compressor": "vitshrink.compressor", "exporters": "vitshrink.exporters",
           "benchmarks": "vitshrink.benchmarks"}
JOBS = ("vitshrink.exporters.export_job", "vitshrink.exporters.export_report")
COMMANDS = ("vitshrink.compressor.jobs.compress_command", "vitshrink.exporters.export_command",
            "vitshrink.benchmarks.bench_command")
# bottom to top: the first prefix a module name starts with gives its layer
LAYERS = [
    ("core", ("vitshrink.compressor.core",)),
    ("data", ("vitshrink.compressor.data",)),
    ("runtime", ("vitshrink.exporters",)),  # export, sessions, timing, profiling (the export job is a job)
    ("scoring", ("vitshrink.compressor.scoring",)),
    ("planning", ("vitshrink.compressor.planning",)),
    ("training", ("vitshrink.compressor.training",)),
    ("jobs", ("vitshrink.compressor.jobs", "vitshrink.benchmarks", *JOBS)),
    ("entry", ("vitshrink.api", "vitshrink.cli", "vitshrink.cli_errors", "vitshrink", *COMMANDS)),
]


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    """The layer of the longest prefix that names `module` or a package holding it."""
    ranked = [(len(p), rank) for rank, (_, prefixes) in enumerate(LAYERS) for p in prefixes
              if module == p or module.startswith(p + ".")]
    assert ranked, f"{module} is in no layer: add it to LAYERS"
    return max(ranked)[1]


def _imports(module: str) -> set[str]:
    """The product modules `module` imports (a `from package import name` counts the module `name` if it is one)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    is_package = MODULES[module].name == "__init__.py"
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its own package
                package = module if is_package else module.rsplit(".", 1)[0]
                package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{package}.{base}" if base else package
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {n for n in names if n in MODULES and n != module and n != "vitshrink"}


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    assert all(_layer(m) >= 0 for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module):
    above = {d for d in GRAPH[module] if _layer(d) > _layer(module)}
    assert not above, f"{module} ({LAYERS[_layer(module)][0]}) imports " + ", ".join(
        f"{d} ({LAYERS[_layer(d)][0]})" for d in sorted(above))


def test_compressor_never_imports_benchmarks():
    bad = {(m, d) for m, deps in GRAPH.items() if m.startswith("vitshrink.compressor")
           for d in deps if d.startswith("vitshrink.benchmarks")}
    assert not bad, sorted(bad)


def test_the_planner_times_nothing():
    runtime = LAYERS.index(next(layer for layer in LAYERS if layer[0] == "runtime"))
    bad = {(m, d) for m, deps in GRAPH.items() if m.startswith("vitshrink.compressor.planning")
           for d in deps if _layer(d) == runtime}
    assert not bad, sorted(bad)


def test_no_import_cycle():
    """Depth-first search for a back edge; the loop found is named in full."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (loop := visit(dep)):
                return loop
        path.pop()
        state[node] = 2
        return None

    for module in sorted(MODULES):
        if module not in state:
            loop = visit(module)
            assert loop is None, "import cycle: " + " -> ".join(loop)


def test_the_check_sees_an_upward_import(tmp_path):
    """The reader finds imports inside functions too (a check that cannot fail is no check)."""
    assert "vitshrink.compressor.core.surgery" in GRAPH["vitshrink.compressor.jobs.pipeline"]
    assert _layer("vitshrink.compressor.core.spec") < _layer("vitshrink.compressor.jobs.pipeline")
