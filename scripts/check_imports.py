"""The import graph of the adalfl package: no cycles, and no import from a lower layer to a higher one.

    python scripts/check_imports.py [PACKAGE_DIR]    # default: src/adalfl; exits 1 on any problem

Every module is parsed with ``ast``, nothing is imported. Every ``import`` counts: at module level,
inside functions, and under ``if TYPE_CHECKING:`` (a type-only import is still a dependency, and
a cycle through one still ties the two modules together). A unit is a subpackage (``data``) or a
top-level module (``core``); the package's own ``__init__`` is the unit ``adalfl``. Reported:

* a cycle between modules, with the imports that make it;
* a cycle between units;
* an import from a unit to a unit in a higher layer (``LAYERS``);
* a unit in no layer: a new subpackage or top-level module takes its place in ``LAYERS`` first.

Units of one layer may import each other (cycles aside). tests/test_imports.py runs this.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# Lowest first: a unit may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("adalfl",),  # the package root: its version only
    ("cpu_memory",),  # glibc allocator settings (config lists their choices)
    ("config",),  # ConfigError, schemas, start-up validation: every layer may refuse a config value
    ("utils", "preemption"),  # seeding, devices, provenance, atomic files, timers; scheduler stop signals
    ("result",),  # result.json as a type: written by app, read by sweep and the scripts
    ("data", "losses", "models"),  # the building blocks, independent of each other
    ("meta",),  # the differentiable optimiser step and the meta-gradient engines
    ("track",),  # metrics.jsonl, W&B, plots, progress lines: methods and the loop log through it
    ("core",),  # JobContext, Method, evaluate: what the methods and the loop share
    ("methods",),  # ce, ml3, taylorglo, metalr, adalfl: each implements core.Method
    ("train",),  # the loop that runs a Method, checkpoints, job folders
    ("sweep",),  # sweep folders, failed-job reports, thread budgets, the sweep report
    ("app", "configstore", "report"),  # one job; schema registration; python -m adalfl.report
]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module of the package
    where: str  # file:line


def modules_of(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package_dir.name, *parts))] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path], root: Path) -> list[Import]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[Import, None] = {}  # ordered, without the repeats of ``from x import a, b``

    def add(dotted: str, line: int) -> None:
        while dotted and dotted not in modules:  # ``import a.b.c`` of a name inside a.b: a.b
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found[Import(name, dotted, f"{path.relative_to(root)}:{line}")] = None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base, node.lineno)  # a submodule, or a name in base
    return list(found)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[0] if len(parts) == 1 else parts[1]


def cycles(nodes: set[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
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
                found.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(found)


def check(package_dir: Path, layers: list[tuple[str, ...]] = LAYERS) -> tuple[list[str], str]:
    """(problems, summary) for the package in ``package_dir``."""
    modules = modules_of(package_dir)
    edges = [e for name, path in modules.items() for e in imports_of(name, path, modules, package_dir.parent)]
    layer_of = {unit: i for i, units in enumerate(layers) for unit in units}
    problems: list[str] = []

    for component in cycles(set(modules), {(e.source, e.target) for e in edges}):
        problems.append("cycle between modules " + ", ".join(component) + ":")
        problems += [
            f"  {e.source} -> {e.target}  ({e.where})" for e in edges if e.source in component and e.target in component
        ]

    unit_edges = [e for e in edges if unit_of(e.source) != unit_of(e.target)]
    units = {unit_of(m) for m in modules}
    for component in cycles(units, {(unit_of(e.source), unit_of(e.target)) for e in unit_edges}):
        problems.append("cycle between units " + ", ".join(component) + ":")
        between: dict[tuple[str, str], list[Import]] = defaultdict(list)
        for e in unit_edges:
            if unit_of(e.source) in component and unit_of(e.target) in component:
                between[unit_of(e.source), unit_of(e.target)].append(e)
        for (a, b), found in sorted(between.items()):  # one example per pair of units
            e = found[0]
            problems.append(
                f"  {a} -> {b}: {e.source} -> {e.target}  ({e.where})"
                + (f" and {len(found) - 1} more" if len(found) > 1 else "")
            )

    for unit in sorted(units - set(layer_of)):
        problems.append(f"unit {unit} is in no layer: give it its place in LAYERS ({Path(__file__).name})")
    for e in unit_edges:
        low, high = layer_of.get(unit_of(e.source)), layer_of.get(unit_of(e.target))
        if low is not None and high is not None and low < high:
            problems.append(
                f"upward import: {unit_of(e.source)} (layer {low}) -> {unit_of(e.target)} "
                f"(layer {high}): {e.source} -> {e.target}  ({e.where})"
            )

    summary = (
        f"{package_dir.name}: {len(modules)} modules, {len(edges)} imports between them, "
        f"{len(units)} units in {len(layers)} layers"
    )
    return problems, summary


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else REPO / "src" / "adalfl"
    problems, summary = check(package_dir.resolve())
    if problems:
        print("\n".join(problems))
        print(f"{summary}: {sum(not p.startswith('  ') for p in problems)} problem(s)")
        return 1
    print(f"{summary}: no cycles, no upward imports")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
