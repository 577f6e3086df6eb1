"""The core speaks in notifications, not in Slack's Web API.

Below the Slack adapter (the rules, the use cases, the build relay), what happens is told
as a notification (`bot.domain.notifications`); only `bot.slack` knows which Web API
method carries it and how its payload is spelt. Read from the source: every string the
code uses (a dict key, a method name, a part of an f-string) counts; docstrings and
comments, which may explain what Slack does, do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BELOW_SLACK = ("bot/domain", "bot/service", "bot/builds")
# Slack's words: its Web API methods, their payload fields, its reply address.
SLACK_WORDS = ("chat.postMessage", "chat.update", "unfurl_links", "response_url", "thread_ts")


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring constants in TREE."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    """The string constants of the module at PATH that are not docstrings, with their line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def _modules() -> list[Path]:
    return sorted(path for folder in BELOW_SLACK for path in (ROOT / folder).rglob("*.py"))


def test_the_source_is_read() -> None:
    relay = ROOT / "bot" / "builds" / "relay.py"
    assert relay in _modules()
    assert any(text.startswith("build:") for _, text in _strings(relay))


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_nothing_below_the_slack_adapter_spells_a_slack_api_word(path: Path) -> None:
    spoken = [
        f"{path.relative_to(ROOT)}:{line}: {word!r} in {text!r}"
        for line, text in _strings(path)
        for word in SLACK_WORDS
        if word in text
    ]
    assert spoken == [], "tell it as a notification (bot.domain.notifications):\n" + "\n".join(
        spoken
    )
