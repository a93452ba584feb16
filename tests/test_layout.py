"""The package's shape: its modules import each other in layers, with no circle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "raytune_ctr"


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (no import at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (at the top or inside functions)."""
    paths = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("raytune_ctr"):
                subs = {f"{node.module}.{a.name}" for a in node.names}
                found |= (subs & paths.keys()) or {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("raytune_ctr")}
        graph[name] = found - {name}
    return graph


def test_no_import_circle():
    graph, order, state = imports(), [], {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import circle: " + " -> ".join([*path, m])
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, [*path, m])
        state[m] = "done"
        order.append(m)

    for m in sorted(graph):
        visit(m, [])


def test_the_leaves_import_only_errors():
    graph = imports()
    for leaf in ("raytune_ctr.data", "raytune_ctr.models", "raytune_ctr.text"):
        # text: the nlp extra; usercode: the user's factories by import path
        ours = graph[leaf] - {"raytune_ctr.errors", "raytune_ctr.text", "raytune_ctr.usercode"}
        assert ours == set(), f"{leaf} imports {sorted(ours)}"
    assert graph["raytune_ctr.errors"] == set() and graph["raytune_ctr.metrics"] == set()
    assert graph["raytune_ctr.usercode"] == {"raytune_ctr.errors"}
    assert graph["raytune_ctr.output"] == {"raytune_ctr.errors", "raytune_ctr.metrics",
                                           "raytune_ctr.reporter"}
    assert graph["raytune_ctr.reporter"] == set()


def test_the_spec_imports_no_registry_and_no_user_code():
    """Names are resolved in checks.py, which imports data, models and usercode;
    spec.py checks shapes and rules with leaves only."""
    leaves = {"raytune_ctr.errors", "raytune_ctr.metrics", "raytune_ctr.output",
              "raytune_ctr.usercode", "raytune_ctr.reporter"}
    assert imports()["raytune_ctr.spec"] <= leaves
