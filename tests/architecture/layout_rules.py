"""The project's shape, read from its source text with `ast` (nothing is imported, so no import
side effect can hide or add an edge): the rules README's Layout section states, as checks that
name what broke them.

- No import circle between modules (imports inside functions count; `if TYPE_CHECKING:` blocks
  do not: they never run).
- Every import points down: each module lives in a room (a package folder, or one of a few
  named modules), each room stands on a floor, and a module may import from its own room or
  from a room on a lower floor only. Rooms on the same floor do not import each other.
- Vocabulary modules (errors, settings, protocol, ...) import only other vocabulary modules.
- No module over MAX_LINES lines; no folder with more than MAX_MODULES modules directly in it.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("supervisor", "tenant_proc", "ipc")
# Folders whose modules count for the size rules, besides the packages.
SIZED = PACKAGES + ("tests", "bench", "scripts")
MAX_LINES = 400
MAX_MODULES = 12  # .py files directly in one folder, __init__.py included

# Rooms and their floors, top first. A module's room is the longest name here that is it or
# a package holding it. Only rooms on a lower floor may be imported from another room.
FLOORS: dict[str, int] = {
    "supervisor.__main__": 100,
    "supervisor.cli": 90,
    "supervisor.arbiter": 80,
    "supervisor.service": 70,
    "supervisor.tenants": 70,
    "supervisor.children": 60,
    "supervisor.config": 50,
    "supervisor.errors": 45,
    "supervisor": 45,  # the package's own __init__ only (PACKAGE_FACES)
    "tenant_proc.main": 40,
    "tenant_proc.handler_loader": 39,  # an old import path of the handler API, kept for users
    "tenant_proc.session": 38,
    "tenant_proc.probe": 38,
    # `idle-supervisor authorize`'s consent flows: beside sign-in, above it (they store what
    # signin/storage.py reads); no tenant process imports them.
    "tenant_proc.signin.consent": 37,
    "tenant_proc.mail": 36,
    "tenant_proc.signin": 36,
    "tenant_proc.imap": 34,
    "tenant_proc.store": 34,
    "tenant_proc.handlers": 34,
    "tenant_proc.message": 32,
    "tenant_proc.process": 32,
    "tenant_proc.http_clients": 32,
    "tenant_proc.spec": 30,
    "tenant_proc.errors": 30,
    "tenant_proc.logs": 30,
    "tenant_proc.deps": 30,
    "tenant_proc.loopback": 30,
    "tenant_proc.private_files": 30,  # state_dir and its files: both sides use it
    "tenant_proc.dns": 30,
    "tenant_proc": 30,  # the package's own __init__ only (PACKAGE_FACES)
    "ipc": 10,
}
# Rooms that hold their own __init__ only: a new module beside them needs a floor of its own.
PACKAGE_FACES = frozenset({"supervisor", "tenant_proc"})
# Modules that define words the rest speaks: they import nothing of the project but each other.
VOCABULARY = frozenset({
    "supervisor.errors", "supervisor.config.settings", "tenant_proc.spec", "tenant_proc.errors",
    "tenant_proc.store.api", "tenant_proc.signin.providers.base", "ipc.protocol",
})


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported project module
    line: int


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the three packages, by dotted name (a package by its __init__)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The project modules `name` imports, wherever in the file, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                _add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                _add(submodule if submodule in modules else base, node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    def _add(target: str, line: int) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.append(Import(name, target, line))

    visit(tree)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def room_of(module: str) -> str:
    candidate = module
    while candidate:
        if candidate in FLOORS and (candidate == module or candidate not in PACKAGE_FACES):
            return candidate
        candidate = candidate.rpartition(".")[0]
    raise KeyError(module)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
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


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each naming the modules, files and lines involved."""
    modules = module_files(root)
    edges = sorted({edge for name, path in modules.items() for edge in imports_of(name, path, modules)},
                   key=lambda e: (e.source, e.line, e.target))
    problems: list[str] = []
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for edge in edges:
        graph[edge.source].add(edge.target)
    for component in circles(graph):
        ties = [f"{e.source} -> {e.target} (line {e.line})" for e in edges
                if e.source in component and e.target in component]
        problems.append(f"import circle between {', '.join(component)}: {'; '.join(ties)}")
    for edge in edges:
        where = f"{modules[edge.source].relative_to(root)}:{edge.line}"
        try:
            source_room, target_room = room_of(edge.source), room_of(edge.target)
        except KeyError as exc:
            problems.append(f"{where}: module {exc.args[0]} has no room in FLOORS: place it")
            continue
        if edge.source in VOCABULARY and edge.target not in VOCABULARY:
            problems.append(f"{where}: vocabulary module {edge.source} imports {edge.target}")
        if source_room != target_room and FLOORS[target_room] >= FLOORS[source_room]:
            problems.append(f"{where}: upward import {edge.source} -> {edge.target} (room "
                            f"{source_room} on floor {FLOORS[source_room]} imports room "
                            f"{target_room} on floor {FLOORS[target_room]})")
    for name in modules:
        try:
            room_of(name)
        except KeyError:
            problems.append(f"{modules[name].relative_to(root)}: module {name} has no room in "
                            "FLOORS: place it")
    problems.extend(size_violations(root))
    return list(dict.fromkeys(problems))


def size_violations(root: Path) -> list[str]:
    problems: list[str] = []
    for top in SIZED:
        if not (root / top).is_dir():
            continue
        folders = {path.parent for path in (root / top).rglob("*.py")}
        for folder in sorted(folders):
            count = len(list(folder.glob("*.py")))
            if count > MAX_MODULES:
                problems.append(f"{folder.relative_to(root)}/ holds {count} modules "
                                f"(at most {MAX_MODULES}): give a concern a folder of its own")
        for path in sorted((root / top).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                problems.append(f"{path.relative_to(root)} has {lines} lines (at most "
                                f"{MAX_LINES}): move a whole concern out")
    return problems
