"""Where nbenv's settings are, and the one reader of its config file.

`config_file`: the file ($NBENV_CONFIG, or the default); `nbenv_home`: the folder nbenv
keeps its own files in ($NBENV_HOME); `read_config_file`: the file's YAML, read strictly
(a key given twice is refused, every problem names its line), which
`bot.config.load_config` then checks against the config's schema (pydantic).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bot.domain.errors import ConfigError
from bot.domain.policy import TeamRoles

DEFAULT_CONFIG_PATH = "config/nbenv.yaml"

KeyPath = tuple[str | int, ...]  # where in the file: keys and list indexes


def config_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file: PATH, or $NBENV_CONFIG, or the default."""
    return Path(path or os.environ.get("NBENV_CONFIG") or DEFAULT_CONFIG_PATH)


def nbenv_home() -> Path:
    """Where nbenv keeps its own files (the default SQLite database, the CLI's log, the
    local backend's checkouts and instances): $NBENV_HOME, or ~/.nbenv."""
    return Path(os.environ.get("NBENV_HOME") or Path.home() / ".nbenv").expanduser()


def team_roles(team: Mapping[str, Any]) -> TeamRoles:
    """A team of the file (`owners`, `testers`, `users`: lists of user IDs) as roles."""
    return TeamRoles(
        owners=frozenset(team.get("owners") or ()),
        testers=frozenset(team.get("testers") or ()),
        users=frozenset(team.get("users") or ()),
    )


class _RefusesDuplicateKeys:
    """A safe loader's constructor that refuses a key given twice in one mapping: YAML
    would keep the second silently (a second `owners:` line would demote the first
    owners)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then a key of its own: an override, meant
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # unhashable: the base class says so
                continue
            if earlier is not key_node:
                raise DuplicateKey(node, key_node, earlier)
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]


MAX_NESTING = 32  # levels of lists and mappings; a config needs fewer than ten


class _ConfigLoader(_RefusesDuplicateKeys, yaml.SafeLoader):
    """PyYAML's own parser: its messages say where and what in words people know. It
    refuses nesting deeper than MAX_NESTING: PyYAML reads a level with a call of its own
    (a thousand end in a RecursionError) and rescans every open flow level at each token
    (time grows with the square of the depth)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_NESTING:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested more than {MAX_NESTING} levels deep",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml's parser, when PyYAML has it, reads a good file ten times faster; a file it
# cannot read is read again by _ConfigLoader, whose words the error then uses.
_FastConfigLoader: type[yaml.SafeLoader] | None = (
    type("_FastConfigLoader", (_RefusesDuplicateKeys, yaml.CSafeLoader), {})
    if hasattr(yaml, "CSafeLoader")
    else None
)


class DuplicateKey(yaml.constructor.ConstructorError):
    def __init__(self, mapping: yaml.Node, key: yaml.Node, first: yaml.Node) -> None:
        super().__init__(
            problem=f"given twice (first on line {first.start_mark.line + 1}): YAML would "
            "keep only the last",
            problem_mark=key.start_mark,
        )
        self.mapping = mapping
        self.key = key.value
        self.root: yaml.Node | None = None  # the document's, to say where MAPPING is


def read_config_file(file: Path) -> tuple[Any, yaml.Node | None]:
    """The file's YAML, and its nodes (their marks say where each value is); a file that
    cannot be read as such is a ConfigError naming the file, the line and the problem."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found (set NBENV_CONFIG)") from None
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the config file: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"{file}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}): save the "
            "config file as UTF-8"
        ) from None
    if _FastConfigLoader is not None and _flow_depth(text) <= MAX_NESTING:
        try:
            return _parse(text, _FastConfigLoader)
        except (yaml.YAMLError, RecursionError):
            pass  # said below, in PyYAML's own words (nesting: it stops at MAX_NESTING)
    try:
        return _parse(text, _ConfigLoader)
    except DuplicateKey as error:
        assert error.problem_mark is not None
        key = key_path((*_node_path(error.root, error.mapping), error.key))
        raise ConfigError(f"{file}:{error.problem_mark.line + 1}: {key}: {error.problem}") from None
    except yaml.MarkedYAMLError as error:
        raise ConfigError(_yaml_problem(file, error)) from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - text.rfind("\n", 0, error.position)
        raise ConfigError(
            f"{file}:{line}:{column}: not valid YAML: character #x{error.character:04x} "
            "is not allowed"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {' '.join(str(error).split())}") from None


def _flow_depth(text: str) -> int:
    """How deep `[` and `{` nest in TEXT, counting those inside strings too: a bound.

    libyaml (the fast parser) recurses in C once per level: a few hundred thousand levels
    overflow its stack and end the process (a segmentation fault, no message). Deeper
    than MAX_NESTING, the file goes to PyYAML's parser, which stops at that depth."""
    depth = deepest = 0
    for char in _NOT_A_BRACKET.sub("", text):
        depth = depth + 1 if char in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


def _parse(text: str, loader_class: type[yaml.SafeLoader]) -> tuple[Any, yaml.Node | None]:
    loader = loader_class(text)
    root = None
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    except DuplicateKey as error:
        error.root = root
        raise
    finally:
        loader.dispose()


def _yaml_problem(file: Path, error: yaml.MarkedYAMLError) -> str:
    """FILE:LINE:COLUMN: not valid YAML: PROBLEM (CONTEXT) — on one line."""
    mark = error.problem_mark or error.context_mark
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
    problem = " ".join((error.problem or "").split())
    context = " ".join((error.context or "").split())
    if context and error.context_mark is not None and error.context_mark is not mark:
        context += f" (line {error.context_mark.line + 1})"
    return f"{where}: not valid YAML: " + (f"{context}: {problem}" if context else problem)


def _node_path(root: yaml.Node | None, target: yaml.Node) -> KeyPath:
    """The keys and indexes from ROOT down to TARGET (each node visited once: aliases)."""
    stack: list[tuple[yaml.Node | None, KeyPath]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        node, at = stack.pop()
        if node is target:
            return at
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack += [(v, (*at, k.value)) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(v, (*at, i)) for i, v in enumerate(node.value)]
    return ()


def key_path(at: KeyPath) -> str:
    text = ""
    for part in at:
        if not isinstance(part, int) and not _PLAIN_KEY.fullmatch(str(part)):
            part = repr(str(part))  # a key with a newline or a blank must not split the line
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# A key as it is named in the message; any other is quoted, its control characters escaped.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
