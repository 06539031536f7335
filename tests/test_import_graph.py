"""The package's import graph, read from the source: no cycle between modules, and each layer
imports only the layers below it (protos → stubs → servicers → executor → engines; the client
and the CLI on top, the client free of everything server-side)."""

from __future__ import annotations

import ast
import graphlib
import pathlib
from collections import defaultdict

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sam3_grpc"

# What each part of the package may import from the package (besides itself). Anything not
# listed is a layering violation; an entry here is a decision, not a convenience.
ALLOWED = {
    "sam3_grpc.v1": set(),  # generated stubs
    "sam3_grpc.domain": set(),
    "sam3_grpc.errors": set(),
    "sam3_grpc.logs": set(),
    "sam3_grpc.config": {"sam3_grpc.errors"},
    "sam3_grpc.envoy_config": set(),
    "sam3_grpc.media": {"sam3_grpc.domain", "sam3_grpc.errors"},
    "sam3_grpc.engines": {
        "sam3_grpc.config",
        "sam3_grpc.domain",
        "sam3_grpc.errors",
        "sam3_grpc.media",
    },
    "sam3_grpc.server": {
        "sam3_grpc",
        "sam3_grpc.config",
        "sam3_grpc.domain",
        "sam3_grpc.engines",
        "sam3_grpc.errors",
        "sam3_grpc.logs",
        "sam3_grpc.media",
        "sam3_grpc.v1",
    },
    # The client runs where torch, OpenCV and the server's packages are absent.
    "sam3_grpc.client": {"sam3_grpc.domain", "sam3_grpc.v1"},
    "sam3_grpc.cli": {
        "sam3_grpc",
        "sam3_grpc.client",
        "sam3_grpc.config",
        "sam3_grpc.envoy_config",
        "sam3_grpc.errors",
        "sam3_grpc.logs",
        "sam3_grpc.server",
    },
    "sam3_grpc": set(),  # __init__: the version only
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The layer a module belongs to: its subpackage, or itself for a top-level module."""
    return ".".join(module.split(".")[:2])


def import_time_nodes(node: ast.AST):
    """The nodes that run when a module is imported: not function bodies, not
    `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for branch in child.orelse for n in [branch, *import_time_nodes(branch)])
            continue
        yield child
        yield from import_time_nodes(child)


def imports(path: pathlib.Path, *, top_level_only: bool) -> set[str]:
    """The sam3_grpc modules a file imports: all of them, or only those imported when the
    module itself is (statements at module level, outside `if TYPE_CHECKING:`)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = list(import_time_nodes(tree)) if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from sam3_grpc.x import y` may import the module sam3_grpc.x.y.
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "sam3_grpc"}


def source_files() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def known_modules() -> set[str]:
    return {module_name(path) for path in source_files()}


def test_each_layer_imports_only_what_it_may():
    known = known_modules()
    violations = defaultdict(set)
    for path in source_files():
        layer = part_of(module_name(path))
        assert layer in ALLOWED, f"{layer} is a new part of the package: add it to ALLOWED"
        for target in imports(path, top_level_only=False) & known:
            if part_of(target) != layer and part_of(target) not in ALLOWED[layer]:
                violations[module_name(path)].add(target)
    assert not violations, dict(violations)


def test_no_import_cycle_between_layers():
    known = known_modules()
    graph = defaultdict(set)
    for path in source_files():
        layer = part_of(module_name(path))
        graph[layer] |= {part_of(t) for t in imports(path, top_level_only=False) & known} - {layer}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_no_import_cycle_between_modules():
    """Module-level imports only (what runs at import time): a cycle there is an import-order
    bug waiting for the next refactor, even when it happens to work today."""
    known = known_modules()
    graph = {}
    for path in source_files():
        module = module_name(path)
        targets = imports(path, top_level_only=True) & known
        # Importing a.b.c runs a/__init__ and a/b/__init__ first; that is not a cycle.
        graph[module] = {t for t in targets if not module.startswith(t + ".")} - {module}
    graphlib.TopologicalSorter(graph).prepare()


def test_the_checker_sees_a_cycle_and_a_violation(tmp_path):
    """The checks above would fail on a real cycle (so they are not vacuous)."""
    graph = {"sam3_grpc.client": {"sam3_grpc.cli"}, "sam3_grpc.cli": {"sam3_grpc.client"}}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError:
        pass
    else:
        raise AssertionError("no cycle found")
    lazy = tmp_path / "sam3_grpc" / "client" / "probe.py"
    lazy.parent.mkdir(parents=True)
    lazy.write_text(
        "from sam3_grpc.v1 import common_pb2\ndef later():\n    from sam3_grpc.server import app\n",
        encoding="utf-8",
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "sam3_grpc"
    try:
        assert imports(lazy, top_level_only=True) == {"sam3_grpc.v1", "sam3_grpc.v1.common_pb2"}
        assert "sam3_grpc.server.app" in imports(lazy, top_level_only=False)
    finally:
        PACKAGE = saved
