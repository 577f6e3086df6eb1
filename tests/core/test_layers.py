"""The store owns all SQL: nothing outside bot/store imports SQLAlchemy or the tables.

Read from the source (every import statement, at any depth, deferred ones included),
so a forbidden import is caught even where no test runs it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "bot" / "store"
FORBIDDEN = ("sqlalchemy", "bot.store.tables")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in PATH; `from X import Y` yields X and X.Y."""
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


def sources() -> Iterator[Path]:
    for folder in (ROOT / "bot", ROOT / "functions"):
        yield from sorted(folder.rglob("*.py"))


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
