"""The package's import layering: sub-packages (and top-level modules) form no circle and at most 9
levels, counting every import (lazy ones inside functions too) but the documented lazy
``seqctr.load`` of the root package. Read from the source with ``ast``: nothing is imported."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "seqctr"
MAX_LEVELS = 9


def _unit(module: str) -> str:
    """``seqctr.models.base`` -> ``seqctr.models``; ``seqctr.config`` stays (a top-level module)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (SRC / parts[1]).is_dir() else module


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """Unit -> the units it imports (any import statement, at any depth of the file)."""
    mods = _modules()
    edges: dict[str, set[str]] = {_unit(m): set() for m in mods}
    for mod, path in mods.items():
        if mod == "seqctr":
            continue                        # the root's lazy ``seqctr.load``: the documented exception
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != "seqctr" and _unit(name) != _unit(mod):
                    edges[_unit(mod)].add(_unit(name))
    return edges


def test_no_circle_and_at_most_nine_levels():
    edges = import_graph()

    @functools.lru_cache(maxsize=None)
    def level(unit: str, path: tuple = ()) -> int:
        assert unit not in path, f"import circle: {' -> '.join(path + (unit,))}"
        return 1 + max((level(d, path + (unit,)) for d in edges[unit]), default=0)

    levels = {u: level(u) for u in edges}
    assert max(levels.values()) <= MAX_LEVELS, sorted(levels.items(), key=lambda kv: kv[1])
    # the leaves the model core stands on import nothing of the package's upper layers
    ground = {"seqctr.errors", "seqctr.utils", "seqctr.metrics"}
    for leaf in ("seqctr.config", "seqctr.checkpoint", "seqctr.ops", "seqctr.errors", "seqctr.utils"):
        assert edges[leaf] <= ground, (leaf, edges[leaf] - ground)
    assert not edges["seqctr.serving"] & {"seqctr.training", "seqctr.experiments", "seqctr.cli"}
    assert not edges["seqctr.experiments"] & {"seqctr.training", "seqctr.cli"}     # (the compression suite reads serving)


def test_the_graph_sees_lazy_imports():
    """A function-level import counts (the checker would otherwise miss a circle made lazily)."""
    edges = import_graph()
    assert "seqctr.nn" in edges["seqctr.experiments"]           # only accounting.py, inside a function
