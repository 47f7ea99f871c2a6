"""The layout of docs/architecture.md holds: every import of ``src/deepalign`` (at the top of a
module or inside a function) points down the layers, so no folder imports one that stands
later in the flow, no folder holds more than a sixth of the code, and no function is over 80
lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "deepalign"

#: the layers, lowest first (docs/architecture.md, "What may import what"): a unit (a folder, or a
#: module at the top of the package) imports only from itself and from units of lower layers
LAYERS = [
    {"errors", "__version__"},
    {"options", "registry", "utils", "records"},
    {"tokens", "models"},
    {"world"},
    {"data"},
    {"training"},
    {"direction"},
    {"decoding"},
    {"attacks", "judges"},
    {"runs"},
    {"metrics"},
    {"reports"},
    {"evaluation"},
    {"study"},
    {"cli", "__init__"},
    {"__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """The units of deepalign that ``path`` imports, anywhere in the module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "deepalign":
            parts = node.module.split(".")
            out |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("deepalign.")}
    return out


def test_every_import_points_down_the_layers():
    against = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        unit = _unit(path)
        assert unit in RANK, f"{path.relative_to(ROOT)}: the folder {unit} has no layer in docs/architecture.md"
        for other in _imports(path) - {unit}:
            assert other in RANK, f"{path.relative_to(ROOT)} imports deepalign.{other}, which has no layer"
            if RANK[other] >= RANK[unit]:
                against[str(path.relative_to(ROOT))].add(other)
    assert not against, f"imports against the flow: {dict(against)}"


def test_no_folder_holds_more_than_a_sixth_of_the_code():
    lines = defaultdict(int)
    for path in ROOT.rglob("*.py"):
        lines[_unit(path)] += len(path.read_text(encoding="utf-8").splitlines())
    total = sum(lines.values())
    big = {u: n for u, n in lines.items() if n > total / 6}
    assert not big, f"over a sixth of {total} lines: {big}"


def test_no_function_over_80_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, f"functions over 80 lines (split them into their steps): {long}"
