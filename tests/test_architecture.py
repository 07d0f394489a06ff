"""The layout rule of docs/ARCHITECTURE.md, checked on the source: packages import only down the stages, and no
module imports another that imports it back (directly or through others, at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: The stages, lowest first. A unit may import units of its own stage or a lower one; never a higher one.
LAYERS: list[set[str]] = [
    {"errors", "versions", "faults"},
    {"metrics"},
    {"sources"},
    {"tasks"},
    {"store"},
    {"analysis"},
    {"recipes"},
    {"engines"},
    {"finetune"},
    {"checkpoints"},
    {"variants"},
    {"report"},
    {"study"},
    {"api"},
    {"cli"},
]


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Every quantcal module's quantcal imports (``from pkg import sub`` counts as importing ``pkg.sub``; the
    implicit import of a module's own parent packages is not counted)."""
    modules: dict[str, Path] = {}
    for path in (src / "quantcal").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                resolved = resolve(target) if target.startswith("quantcal") else None
                if resolved and resolved != module and not module.startswith(resolved + "."):
                    graph[module].add(resolved)
    return graph


def unit_of(module: str) -> str:
    """``quantcal.recipes.gptq`` -> ``recipes``; ``quantcal.api`` -> ``api``; ``quantcal`` (the facade) -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"quantcal.{unit} is in no stage of LAYERS: add it to docs/ARCHITECTURE.md and this test")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert cycles(module_graph()) == []


def test_imports_point_down_the_stages() -> None:
    upward = []
    for module, targets in module_graph().items():
        if module == "quantcal":  # the facade re-exports the API on first use
            continue
        for target in targets:
            if target == "quantcal":
                upward.append(f"{module} imports the quantcal facade (import the module that defines the name)")
            elif layer_of(unit_of(target)) > layer_of(unit_of(module)):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_every_package_is_in_a_stage_and_documented() -> None:
    doc = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    units = {unit_of(m) for m in module_graph()} - {""}
    for unit in units:
        layer_of(unit)
        assert f"`{unit}" in doc, f"quantcal.{unit} is not described in docs/ARCHITECTURE.md"


@pytest.mark.parametrize("source, expected", [
    ({"a.py": "from quantcal import b\n", "b.py": "def f():\n    from quantcal.a import x\n"}, [["quantcal.a", "quantcal.b"]]),
    ({"a.py": "from quantcal import b\n", "b.py": "x = 1\n"}, []),
])
def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path: Path, source: dict[str, str],
                                                                       expected: list[list[str]]) -> None:
    package = tmp_path / "quantcal"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in source.items():
        (package / name).write_text(text)
    assert cycles(module_graph(tmp_path)) == expected


def test_no_package_or_module_shadows_a_public_name() -> None:
    """``import quantcal.x.y`` binds ``quantcal.x`` on the facade, which would hide a lazily re-exported API name ``x``
    (a package once named ``export`` turned ``quantcal.export(...)`` into "'module' object is not callable")."""
    import quantcal

    top = {path.stem if path.is_file() else path.name for path in (SRC / "quantcal").iterdir()
           if (path.is_dir() and (path / "__init__.py").exists()) or path.suffix == ".py"}
    assert not top & set(quantcal.__all__), sorted(top & set(quantcal.__all__))
