"""ARCHITECTURE.md's "what may import what", checked on every import in the package (lazy ones too)."""

import ast
from pathlib import Path

import hf_ilp

PACKAGE = Path(hf_ilp.__file__).parent

# room -> the rooms it may import (besides `_lazy`, every package's export helper)
ALLOWED = {
    "files": set(), "_rows": set(), "resources": set(), "privacy": set(),
    "reporting": {"privacy"},
    "training": {"files", "recipes"},  # recipes: the deprecated aliases of the helpers that moved there
    "recipes": {"training", "resources"},
    "tracking": {"files", "_rows", "reporting"},
    "diagnosis": {"tracking", "reporting", "privacy", "files", "_rows"},
    "interventions": {"diagnosis", "tracking", "training", "files", "_rows"},
    "hub": {"diagnosis", "tracking", "training", "files", "_rows", "resources", "privacy"},
    "isolation": {"files"},
    "fusion": {"isolation", "training", "files"},
    "fp4": {"resources"},
    "metrics": {"resources"},
}
ANY = {"world", "cli"}  # the demo world and the command line sit downstream of every room


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ""


def _imported_rooms(path: Path) -> set:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "hf_ilp" else [f"hf_ilp.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        rooms |= {n.split(".")[1] for n in names if n.startswith("hf_ilp.")}
    return rooms


def test_every_room_imports_only_the_rooms_upstream_of_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path)
        if room in ("", "_lazy") or room in ANY:
            continue
        assert room in ALLOWED, f"{path.relative_to(PACKAGE)}: a room ARCHITECTURE.md does not place; add it there and here"
        extra = _imported_rooms(path) - ALLOWED[room] - {room, "_lazy", "__version__"}
        wrong += [f"{path.relative_to(PACKAGE)} imports hf_ilp.{r}" for r in sorted(extra)]
    assert not wrong, "imports against ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_no_product_room_imports_the_demo_world():
    assert all("world" not in allowed for allowed in ALLOWED.values())
