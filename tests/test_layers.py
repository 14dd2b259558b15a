"""The package's folders are its layers: imports run one way (down), and no module imports itself in a circle.

Read from the source with ``ast``, so imports inside functions (the lazy ones) count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Each folder's layer; a module may import from its own folder or from a lower layer only.
LAYERS: dict[str, int] = {
    "runtime": 0,
    "models": 1,
    "render": 1,
    "io": 2,
    "capturing": 3,
    "data": 3,
    "explain": 4,
    "jobs": 5,
    "report": 5,
    "train": 5,
    "cli": 6,
    "(top)": 7,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "attnviz").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    for path in sorted((ROOT / "cli").glob("*.py")):
        found["attnviz.cli" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return found


def _folder(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "(top)"
    if parts[1] == "cli":
        return "cli"
    return parts[1] if (ROOT / "attnviz" / parts[1]).is_dir() else "(top)"


def _imports(path: Path, known: set[str]) -> set[str]:
    """The attnviz modules ``path`` imports (``from pkg import module`` resolved to the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnviz"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("attnviz"))
    return {name for name in found if name in known}


MODULES = _modules()
GRAPH = {module: _imports(path, set(MODULES)) - {module} for module, path in MODULES.items()}


def test_every_folder_has_a_layer() -> None:
    folders = {_folder(module) for module in MODULES}
    assert folders <= set(LAYERS), f"folders without a layer: {sorted(folders - set(LAYERS))}"
    assert {"runtime", "io", "capturing", "explain", "jobs", "render"} <= folders


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers(module: str) -> None:
    source = _folder(module)
    upward = [
        target
        for target in sorted(GRAPH[module])
        if target != "attnviz"  # the package itself (``__version__``) is loaded before any of its modules
        and _folder(target) != source
        and LAYERS[_folder(target)] >= LAYERS[source]
        and not _is_package_face(module)
    ]
    assert not upward, f"{module} ({source}) imports {upward} from the same or a higher layer"


def test_runtime_imports_nothing_of_attnviz_above_it() -> None:
    for module, targets in GRAPH.items():
        if _folder(module) == "runtime":
            assert all(_folder(target) == "runtime" for target in targets), (module, targets)


def test_no_import_circles() -> None:
    """Depth-first search for a cycle among modules, ignoring a package's ``__init__`` re-exports."""
    graph = {m: {t for t in targets if not _is_package_face(t)} for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_the_check_sees_real_imports() -> None:
    """The graph is not empty by accident: known edges of the layout are found."""
    assert "attnviz.runtime.errors" in GRAPH["attnviz.io.checkpoints"] or any(
        _folder(t) == "runtime" for t in GRAPH["attnviz.io.checkpoints"]
    )
    assert any(_folder(t) == "explain" for t in GRAPH["attnviz.jobs.compare"])


def _is_package_face(module: str) -> bool:
    """A package's ``__init__`` (the public face that lazily re-exports names of its own or lower layers)."""
    path = MODULES.get(module)
    return path is not None and path.name == "__init__.py"
