"""The architecture, checked from the source: imports flow one way, between packages and inside `workflows/`.

Every import is counted, at module level or inside a function, so a cycle cannot be hidden by a late import.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ldm", "probes", "workflows")
# The rooms of workflows/, top to bottom: a module may import rooms below its own, and its own room's modules.
ROOMS = {"cli": 0, "run": 1, "demo": 1, "pipeline": 2, "ray": 3, "report": 3, "stages": 4, "store": 5, "config": 6}
# What each package may import of the others.
ALLOWED = {"probes": set(), "ldm": set(), "workflows": {"ldm", "probes"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The project modules `name` imports (a package counts as its __init__)."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]  # `import a.b.c` of an attribute: the module that has it
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "workflows" and len(parts) > 1 else None


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join((path + [node])[(path + [node]).index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_packages_import_one_way():
    bad = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
           if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not bad, "\n".join(bad)


def test_workflows_rooms_import_downwards():
    unknown = sorted({room(m) for m in MODULES if room(m) and room(m) not in ROOMS})
    assert not unknown, f"modules outside the stated rooms: {unknown}; add them to ROOMS and to docs/CONTRACTS.md"
    bad = [f"{a} ({room(a)}) imports {b} ({room(b)})" for a, targets in GRAPH.items() if room(a)
           for b in targets if room(b) and room(b) != room(a) and ROOMS[room(b)] <= ROOMS[room(a)]]
    assert not bad, "imports against the stated direction:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["workflows", "workflows.config", "workflows.store", "workflows.stages",
                                     "workflows.ray", "workflows.report", "probes"])
def test_each_room_states_what_it_may_import(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text())) or ""
    assert "import" in doc, f"{package}/__init__.py: its docstring should state what the room may import"


def test_the_checker_finds_cycles_and_late_imports():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    # a function-level import counts: workflows.cli imports its subcommands' modules inside functions only
    assert "workflows.demo" in GRAPH["workflows.cli"]
