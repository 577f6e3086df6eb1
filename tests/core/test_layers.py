"""Imports point one way: the layering of nbenv, read from the source.

Every import counts, at any depth: at the top, deferred inside a function, only for the
type checker (`if TYPE_CHECKING:`), relative, or by name (a string naming one of our
modules, as `importlib` and gunicorn take them). Each is a dependency a reader has to
follow, and a cycle waiting for the day it runs; so a forbidden import is caught even
where no test runs it.

The layers, lowest first; each may import itself and what its row names:

    domain          -                        the rules, pure (no I/O)
    config          domain                   the config file, its schema, nbenv's home
    runner          -                        the notebook test runner, a program of its own
    processes       -                        whether a process is alive
    terminal        domain                   who runs nbenv at a terminal
    store           domain, config           the unit of work, its repositories, all SQL
    service         domain, config, store    the use cases, and the ports they need
    adapters        service, store, config,  slack, builds (the relay), backends.gcp,
                    domain, runner,          backends.local: never each other
                    processes
    entry points    anything                 they wire the rest (see ENTRY_POINTS)

The store is the service's unit of work, used as it is (there is no abstract one to
swap): it sits below the service, so the service and the adapters may use it, and it
imports neither. Nothing below the entry points imports an entry point or a sibling
adapter: a relay that queues Slack messages does it through the store's outbox and
delivers them through a port (`bot.service.ports.DeliversMessages`). No module imports
itself back through others (no cycles). A new module is covered by its package's row;
a new package or entry point needs a row here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "bot" / "store"
FORBIDDEN = ("sqlalchemy", "bot.store.tables")

ENTRY = "entry points"
# Each module's layer: the row of the longest package (or module) that holds it.
LAYER_OF = {
    "bot.domain": "domain",
    "bot.config": "config",
    "bot.config_file": "config",
    "bot.runner": "runner",
    "bot.processes": "processes",
    "bot.terminal": "terminal",
    "bot.store": "store",
    "bot.service": "service",
    "bot.slack": "slack",
    "bot.builds": "builds",
    "bot.backends": "backends",  # the package's docstring only
    "bot.backends.gcp": "backends.gcp",
    "bot.backends.local": "backends.local",
}
# Modules that start a program or a process, or wire the parts for them.
ENTRY_POINTS = frozenset(
    {
        "bot",  # the package itself: a docstring and the version
        "bot.__main__",  # python -m bot
        "bot.cli",  # nbenv …
        "bot.bootstrap",  # the composition root: config + store + backend → the service
        "bot.demo",  # nbenv demo
        "bot.slack.serve",  # nbenv serve
        "bot.slack.web",  # one nbenv serve worker: its routes, runtime and threads
        "bot.slack.answer_process",  # a serve worker's answer process
        "bot.slack.socket",  # nbenv socket
        "bot.slack.shell",  # nbenv shell
        "functions.main",  # the relay's Cloud Function
    }
)
ADAPTER_MAY_IMPORT = frozenset({"service", "store", "config", "domain", "runner", "processes"})
# What each layer may import besides itself.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "domain": frozenset(),
    "config": frozenset({"domain"}),
    "runner": frozenset(),
    "processes": frozenset(),
    "terminal": frozenset({"domain"}),
    "store": frozenset({"domain", "config"}),
    "service": frozenset({"domain", "config", "store"}),
    "slack": ADAPTER_MAY_IMPORT,
    "builds": ADAPTER_MAY_IMPORT,
    "backends": frozenset(),
    "backends.gcp": ADAPTER_MAY_IMPORT,
    "backends.local": ADAPTER_MAY_IMPORT,
}
# (importing module, imported module): allowed for now, while a change lands elsewhere,
# e.g. ("bot.service.example", "bot.slack.outbox"): "until … moves to …; remove then".
# Each entry says why and what removes it; one that is no longer needed fails the test.
TEMPORARY_EXCEPTIONS: dict[tuple[str, str], str] = {}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import in PATH; `from X import Y` yields X and
    X.Y (Y may be a module or a name in X)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


def sources(root: Path = ROOT) -> Iterator[Path]:
    for folder in (root / "bot", root / "functions"):
        yield from sorted(folder.rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # path:line

    def __str__(self) -> str:
        importer, imported = layer(self.importer), layer(self.imported)
        return f"{self.where}: {self.importer} ({importer}) imports {self.imported} ({imported})"


def import_graph(root: Path = ROOT) -> tuple[set[str], list[Edge]]:
    """Our modules, and an edge for each import of one of them by another.

    Resolved to the module: `from bot.slack import views` is an edge to bot.slack.views,
    relative imports (`from . import x`) to the module they name.
    """
    paths = {module_name(path, root): path for path in sources(root)}
    edges: list[Edge] = []
    for importer, path in paths.items():
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            named: list[str] = []
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                named = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                    for alias in node.names
                ]
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = named_by_string(node.value, paths)
            for name in named:
                # `import a.b.c` names a.b.c; the longest of our modules that it names
                while name and name not in paths:
                    name = name.rpartition(".")[0]
                if name and name != importer:
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    edges.append(Edge(importer, name, where))
    return set(paths), edges


def named_by_string(text: str, modules: Iterable[str]) -> list[str]:
    """The module a string names, when it is one of ours or a class in one: imports by
    name (`importlib.import_module("bot.slack.shell")`, gunicorn's worker class)."""
    module, _, attribute = text.rpartition(".")
    if text in modules:
        return [text]
    if module in modules and attribute[:1].isupper() and attribute.isidentifier():
        return [module]
    return []


def layer(module: str) -> str | None:
    if module in ENTRY_POINTS:
        return ENTRY
    holders = [key for key in LAYER_OF if module == key or module.startswith(key + ".")]
    return LAYER_OF[max(holders, key=len)] if holders else None


def allowed(edge: Edge) -> bool:
    importer, imported = layer(edge.importer), layer(edge.imported)
    if importer in (ENTRY, imported):
        return True
    return importer is not None and imported in MAY_IMPORT[importer]


def cycles(modules: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """The import cycles: each strongly connected group of two or more modules, sorted
    (Tarjan's algorithm, iterative)."""
    successors: dict[str, list[str]] = {module: [] for module in modules}
    for edge in edges:
        successors.setdefault(edge.importer, []).append(edge.imported)
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(successors):
        if start in index:
            continue
        work = [(start, iter(successors[start]))]
        index[start] = lowest[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            step = next(pending, None)
            if step is not None:
                if step not in index:
                    index[step] = lowest[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(successors.get(step, []))))
                elif step in on_stack:
                    lowest[node] = min(lowest[node], index[step])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowest[parent] = min(lowest[parent], lowest[node])
            if lowest[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)


def test_every_module_has_a_layer() -> None:
    modules, _ = import_graph()
    unplaced = sorted(module for module in modules if layer(module) is None)
    assert unplaced == [], "give these a row in LAYER_OF or ENTRY_POINTS:\n" + "\n".join(unplaced)


def test_imports_point_one_way() -> None:
    _, edges = import_graph()
    offenders = sorted(
        str(edge)
        for edge in edges
        if not allowed(edge) and (edge.importer, edge.imported) not in TEMPORARY_EXCEPTIONS
    )
    assert offenders == [], "imports against the layering (see this module's docstring):\n" + (
        "\n".join(offenders)
    )


def test_no_module_imports_itself_back() -> None:
    modules, edges = import_graph()
    found = cycles(modules, edges)
    described = [
        " ↔ ".join(group)
        + "\n    "
        + "\n    ".join(
            str(edge) for edge in edges if edge.importer in group and edge.imported in group
        )
        for group in found
    ]
    assert found == [], "import cycles:\n" + "\n".join(described)


def test_every_temporary_exception_is_still_needed() -> None:
    _, edges = import_graph()
    against = {(edge.importer, edge.imported) for edge in edges if not allowed(edge)}
    stale = sorted(f"{a} → {b}" for a, b in TEMPORARY_EXCEPTIONS if (a, b) not in against)
    assert stale == [], "remove these from TEMPORARY_EXCEPTIONS:\n" + "\n".join(stale)


def test_every_layer_named_has_a_row() -> None:
    named = set(LAYER_OF.values())
    for may in MAY_IMPORT.values():
        named |= may
    assert named <= set(MAY_IMPORT)


def test_the_graph_sees_every_kind_of_import_and_cycle(tmp_path: Path) -> None:
    """Top-level, deferred, TYPE_CHECKING-only, relative and by-name imports are all
    edges, and a cycle through any of them is found."""
    files = {
        "bot/__init__.py": "",
        "bot/domain/__init__.py": "",
        "bot/domain/rules.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from bot.service.use import Case\n",
        "bot/service/__init__.py": "",
        "bot/service/use.py": "from . import other\ndef later():\n    import bot.domain.rules\n",
        "bot/service/other.py": "from bot.service import use\n",
        "bot/slack/__init__.py": "",
        "bot/slack/outbox.py": "",
        "bot/builds/__init__.py": "",
        "bot/builds/relay.py": "from bot.slack.outbox import Sender\nimport bot.cli\n",
        "bot/cli.py": "from bot.builds import relay\nPROGRAM = 'bot.slack.outbox'\n",
        "functions/main.py": "import bot\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    modules, edges = import_graph(tmp_path)
    pairs = {(edge.importer, edge.imported) for edge in edges}
    assert pairs == {
        ("bot.domain.rules", "bot.service.use"),
        ("bot.service.use", "bot.service.other"),
        ("bot.service.use", "bot.domain.rules"),
        ("bot.service.other", "bot.service.use"),
        ("bot.builds.relay", "bot.slack.outbox"),
        ("bot.builds.relay", "bot.cli"),
        ("bot.cli", "bot.builds.relay"),
        ("bot.cli", "bot.slack.outbox"),
        ("functions.main", "bot"),
    }
    against = sorted(f"{e.importer} → {e.imported}" for e in edges if not allowed(e))
    assert against == [
        "bot.builds.relay → bot.cli",
        "bot.builds.relay → bot.slack.outbox",
        "bot.domain.rules → bot.service.use",
    ]
    assert cycles(modules, edges) == [
        ["bot.builds.relay", "bot.cli"],
        ["bot.domain.rules", "bot.service.other", "bot.service.use"],
    ]


def test_only_the_store_imports_sqlalchemy_or_the_tables() -> None:
    offenders = sorted(
        {
            f"{path.relative_to(ROOT)}:{line}"
            for path in sources()
            if not path.is_relative_to(STORE)
            for line, module in imported_modules(path)
            if forbidden(module)
        }
    )
    assert offenders == [], "SQL belongs in bot/store/repositories:\n" + "\n".join(offenders)


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The walk finds plain, from- and deferred (function-level) imports alike."""
    source = tmp_path / "example.py"
    source.write_text(
        "import sqlalchemy as sa\n"
        "from bot.store import tables as t\n"
        "def later():\n"
        "    from sqlalchemy.exc import OperationalError\n"
        "from bot.store.uow import Store\n",
        encoding="utf-8",
    )
    found = [(line, module) for line, module in imported_modules(source) if forbidden(module)]
    assert [line for line, _ in found] == [1, 2, 4, 4]
    assert not any(module.startswith("bot.store.uow") for _, module in found)


def test_no_adapter_or_use_case_writes_sql_on_the_connection() -> None:
    """Outside the store, a transaction is used through its repositories only."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources()
        if not path.is_relative_to(STORE)
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ".connection.execute(" in text
    ]
    assert offenders == []
