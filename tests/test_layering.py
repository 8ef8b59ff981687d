"""The intended layering of the package (docs/ARCHITECTURE.md), checked on the source: a module imports only
modules of lower layers or of its own unit; the application modules import each other without cycles; no module
over 400 lines and no engine function over 60."""

from __future__ import annotations

import ast
from pathlib import Path

import epg

ROOT = Path(epg.__file__).parent
# Bottom to top; a unit is a module or a package.
LAYERS = [
    ("primitives", ("epg.atomic", "epg.rng", "epg.dist", "epg.pixels", "epg.noise")),
    ("configuration", ("epg.config", "epg.config_help")),
    ("networks and data", ("epg.nn", "epg.data")),
    ("method", ("epg.objectives", "epg.sampling", "epg.metrics")),
    ("generation and stages", ("epg.generate", "epg.stages")),
    ("engine", ("epg.engine",)),
    ("application", ("epg", "epg.__main__", "epg.presets", "epg.evaluation", "epg.plot", "epg.cli", "epg.generate_cli",
                     "epg.demo", "epg.api", "epg.interop")),
]
APPLICATION = len(LAYERS) - 1


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> tuple[int, str]:
    """(layer index, unit) of a module: the longest unit that is the module or a package above it."""
    best = None
    for i, (_, units) in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".") and unit != "epg") and (
                    best is None or len(unit) > len(best[1])):
                best = (i, unit)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md"
    return best


def imports_of(path: Path) -> set[str]:
    """Every epg module a file imports, at the top or inside a function (relative imports resolved)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "epg" or a.name.startswith("epg.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base == "epg" or base.startswith("epg."):
                found.add(base)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def layering_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in edges.items():
        layer, unit = unit_of(module)
        for target in targets:
            t_layer, t_unit = unit_of(target)
            if t_layer > layer or (t_layer == layer and t_unit != unit and layer != APPLICATION):
                bad.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[t_layer][0]})")
    return sorted(bad)


def unit_cycles(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of distinct units that import each other (directly or through other units)."""
    units: dict[str, set[str]] = {}
    for module, targets in edges.items():
        units.setdefault(unit_of(module)[1], set()).update(unit_of(t)[1] for t in targets)
    reach = {u: set(v) - {u} for u, v in units.items()}
    changed = True
    while changed:
        changed = False
        for u in reach:
            more = set().union(*(reach.get(v, set()) for v in reach[u])) - reach[u] - {u}
            if more:
                reach[u] |= more
                changed = True
    return sorted((a, b) for a in reach for b in reach[a] if a < b and a in reach.get(b, set()))


def test_no_module_imports_a_higher_layer():
    assert layering_violations(graph()) == []


def test_no_two_units_import_each_other():
    assert unit_cycles(graph()) == []


def test_the_check_catches_an_upward_import_and_a_cycle():
    edges = {"epg.objectives.base": {"epg.engine.rng"}, "epg.cli": {"epg.generate_cli"},
             "epg.generate_cli": {"epg.cli"}, "epg.noise": {"epg.config"}}
    assert layering_violations(edges) == [
        "epg.noise (primitives) imports epg.config (configuration)",
        "epg.objectives.base (method) imports epg.engine.rng (engine)"]
    assert unit_cycles(edges) == [("epg.cli", "epg.generate_cli")]


def test_modules_and_engine_functions_stay_small():
    long_modules = [f"{p.relative_to(ROOT)}: {n}" for p in ROOT.rglob("*.py")
                    if (n := len(p.read_text().splitlines())) > 400]
    long_functions = []
    for p in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{p.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long_modules == [] and long_functions == []
