"""The import contract: every import in src/convscope (module level and inside functions, relative and absolute)
goes to the same package or to a lower floor, and no two packages import each other.

FLOORS is the table docs/architecture.md quotes: a package may import its own modules and any package on a lower
floor; packages on the same floor (analysis and train) do not import each other.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "convscope"

#: package (first component under convscope/, a top-level module without ".py") -> floor
FLOORS = {
    "utils": 1, "files": 1, "extras": 1, "limits": 1,
    "ops": 2, "layers": 2, "data": 2,
    "models": 3,
    "heads": 4,
    "analysis": 5, "train": 5, "explain": 5,
    "deploy": 6,
    "bench": 7,
    "cli": 8, "__main__": 8,
}
#: same-floor imports that are allowed (importer, imported): layers builds on ops, `python -m` runs the CLI
SAME_FLOOR_OK = {("layers", "ops"), ("__main__", "cli")}
#: what convscope/__init__.py (the public API) may import: models/ and below; so only the floors above may import it
INIT_MAX_FLOOR = 3


def _package_of(module: str, root: Path = ROOT) -> str:
    """'convscope.deploy.prune.groups' -> 'deploy'; 'convscope' and its attributes ('convscope.__version__') ->
    '__init__'."""
    parts = module.split(".")
    if len(parts) < 2 or not ((root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file()):
        return "__init__"
    return parts[1]


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every convscope import in the file, lazy ones included."""
    name = _module_name(path, root)
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "convscope"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "convscope":
                continue
            if node.module is None or target in ("convscope",):   # `from . import x`, `from convscope import x`
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def import_edges(root: Path = ROOT) -> list[tuple[str, int, str, str]]:
    """(file, line, importer package, imported package) for every import between two different packages."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        src = _package_of(_module_name(path, root), root)
        for line, target in _imported_modules(path, root):
            dst = _package_of(target, root)
            if dst != src:
                edges.append((str(path.relative_to(root.parent)), line, src, dst))
    return edges


def contract_violations(edges: list[tuple[str, int, str, str]]) -> list[str]:
    """One line per import that breaks the floors, then one per pair of packages that import each other."""
    bad = []
    for where, line, src, dst in edges:
        if src == "__init__":
            if FLOORS.get(dst, 99) > INIT_MAX_FLOOR:
                bad.append(f"{where}:{line}: convscope/__init__ imports {dst} (floor {FLOORS.get(dst)}); "
                           f"the public API may import floor {INIT_MAX_FLOOR} and below")
            continue
        if dst == "__init__":
            if FLOORS.get(src, 0) <= INIT_MAX_FLOOR:
                bad.append(f"{where}:{line}: {src} imports the convscope package itself (it imports floor "
                           f"{INIT_MAX_FLOOR}); import the module you need")
            continue
        if src not in FLOORS or dst not in FLOORS:
            bad.append(f"{where}:{line}: package {src if src not in FLOORS else dst!r} has no floor in FLOORS")
            continue
        up = FLOORS[dst] > FLOORS[src] or (FLOORS[dst] == FLOORS[src] and (src, dst) not in SAME_FLOOR_OK)
        if up:
            bad.append(f"{where}:{line}: {src} (floor {FLOORS[src]}) imports {dst} (floor {FLOORS[dst]})")
    pairs = {(s, d) for _, _, s, d in edges}
    bad += [f"cycle: {a} and {b} import each other" for a, b in sorted(pairs) if a < b and (b, a) in pairs]
    return bad


def test_no_upward_import_and_no_cycle():
    bad = contract_violations(import_edges())
    assert not bad, "imports against the layer floors:\n" + "\n".join(bad)


def test_every_package_has_a_floor():
    packages = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
                if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert packages <= set(FLOORS), f"packages without a floor: {sorted(packages - set(FLOORS))}"


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """A function-level relative import from layers/ into deploy/ and a cycle are both reported."""
    pkg = tmp_path / "convscope"
    for sub in ("layers", "deploy"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "layers" / "x.py").write_text("def f():\n    from ..deploy.reparam import g\n    return g\n")
    (pkg / "deploy" / "y.py").write_text("import convscope.layers.x\n")
    bad = contract_violations(import_edges(pkg))
    assert any("layers/x.py:2: layers (floor 2) imports deploy (floor 6)" in b for b in bad), bad
    assert "cycle: deploy and layers import each other" in bad


@pytest.mark.parametrize("src,dst,ok", [("models", "layers", True), ("layers", "models", False),
                                        ("analysis", "train", False), ("deploy", "train", True)])
def test_floor_rules(src, dst, ok):
    assert (not contract_violations([("f.py", 1, src, dst)])) == ok


def documented_floors(text: str) -> dict[str, int]:
    """The floor table of docs/architecture.md ('| 3 | `models/`, `hub` ... |') as {package: floor}."""
    out = {}
    for floor, cells in re.findall(r"^\| (\d+) \| (.+?) \|$", text, flags=re.M):
        for name in re.findall(r"`(\w+)(?:/|\.py)?`", re.sub(r"\([^)]*\)", "", cells)):
            out[name] = int(floor)
    return out


def test_architecture_page_draws_the_floors_from_this_table():
    text = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    assert documented_floors(text) == FLOORS
