"""The layer rule of docs/design.md, checked on the source: every `hpe_ray` import (module level
and inside functions) points to a lower layer or within its own package, never up, and never in
a loop; the Ray-free layers never import ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "hpe_ray"

# Lowest first. A module may import its own layer's modules (no loops) and any lower layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("geometry", ("hpe_ray", "hpe_ray.dependencies", "hpe_ray.backend", "hpe_ray.skeleton", "hpe_ray.rotation", "hpe_ray.camera",
                  "hpe_ray.normalization", "hpe_ray.metrics", "hpe_ray.plotting", "hpe_ray.config")),
    ("data", ("hpe_ray.data",)),
    ("models", ("hpe_ray.models",)),
    ("training core", ("hpe_ray.training",)),
    ("inference", ("hpe_ray.inference",)),
    ("evaluation and figures", ("hpe_ray.evaluate", "hpe_ray.figures")),
    ("search space and results", ("hpe_ray.search", "hpe_ray.search.space", "hpe_ray.search.results",
                                  "hpe_ray.report")),
    ("ray train", ("hpe_ray.distributed",)),
    ("ray tune", ("hpe_ray.search.tune",)),
    ("cli", ("hpe_ray.demo", "hpe_ray.cli", "hpe_ray.__main__")),
]
RAY_LAYERS = ("ray train", "ray tune", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific prefix that names `module`."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "hpe_ray":
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module}: not in any layer of tests/test_layers.py; add it")
    return best[0]


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, however deeply nested."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.lineno))
            # `from hpe_ray import figures` imports a module, not a name.
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names
                      if (PACKAGE_DIR.parent / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
                      or (PACKAGE_DIR.parent / f"{node.module}.{alias.name}".replace(".", "/")).is_dir()]
    return found


def package_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported hpe_ray module or "ray", line)]."""
    graph = {}
    for path in sorted(package_dir.rglob("*.py")):
        edges = []
        for name, line in imports_of(path):
            if name == "ray" or name.startswith("ray."):
                edges.append(("ray", line))
            elif name.startswith("hpe_ray"):
                edges.append((name, line))
        graph[module_name(path)] = edges
    return graph


def violations(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    problems = []
    known = set(graph)
    for module, edges in graph.items():
        source = layer_of(module)
        for target, line in edges:
            if target == "ray":
                if LAYERS[source][0] not in RAY_LAYERS:
                    problems.append(f"{module}:{line} imports ray, but layer {LAYERS[source][0]!r} is Ray-free")
                continue
            if target not in known or target == "hpe_ray":
                continue  # `from hpe_ray.x import name`: the module edge is recorded separately
            if layer_of(target) > source:
                problems.append(f"{module}:{line} imports {target} from the higher layer "
                                f"{LAYERS[layer_of(target)][0]!r} (it is in {LAYERS[source][0]!r})")
    return problems + [f"import loop: {' -> '.join(loop)}" for loop in loops(graph)]


def loops(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Import cycles between package modules (depth-first search, each cycle once)."""
    found, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target, _ in graph.get(module, []):
            if target not in graph or target == module:
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    return found


def test_every_import_points_down_and_there_are_no_loops():
    problems = violations(package_graph())
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_an_upward_import_and_on_a_loop(tmp_path):
    graph = package_graph()
    upward = {**graph, "hpe_ray.metrics": graph["hpe_ray.metrics"] + [("hpe_ray.training.loop", 99)]}
    assert any("hpe_ray.metrics:99 imports hpe_ray.training.loop" in p for p in violations(upward))
    ray_in_core = {**graph, "hpe_ray.training.loop": graph["hpe_ray.training.loop"] + [("ray", 7)]}
    assert any("Ray-free" in p for p in violations(ray_in_core))
    looped = {**graph, "hpe_ray.data.shards": graph["hpe_ray.data.shards"] + [("hpe_ray.data.stream", 5)]}
    assert any(p.startswith("import loop") and "hpe_ray.data.stream" in p for p in violations(looped))
    # Imports inside functions count too.
    source = tmp_path / "hpe_ray" / "metrics.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from hpe_ray.distributed import run_training\n")
    assert ("hpe_ray.distributed", 2) in imports_of(source)


@pytest.mark.parametrize("module", ["hpe_ray.training.loop", "hpe_ray.evaluate", "hpe_ray.inference",
                                    "hpe_ray.figures", "hpe_ray.report"])
def test_ray_free_layers_load_without_ray(module):
    import subprocess
    import sys

    code = f"import sys, {module}; assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_design_names_every_module():
    """docs/design.md's module table is the map a newcomer reads; a module missing there is lost."""
    design = (PACKAGE_DIR.parent / "docs" / "design.md").read_text()
    missing = [str(path.relative_to(PACKAGE_DIR.parent)) for path in sorted(PACKAGE_DIR.rglob("*.py"))
               if path.name not in ("__init__.py", "__main__.py")
               and f"`{path.relative_to(PACKAGE_DIR.parent)}`" not in design and f"`{path.name}`" not in design]
    assert not missing, f"docs/design.md does not name: {', '.join(missing)}"
