"""The config file, fuzzed: any field of a valid config removed, retyped, made huge or
given control characters, unknown keys, nesting without end, aliases that multiply
(billion laughs). `load_config` accepts it or stops with one line that starts with the
file — never a traceback — in time linear in the file's size."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.config import load_config
from bot.domain.errors import ConfigError
from tests.conftest import TEST_CONFIG
from tests.fuzz.strategies import DEEP, apply, assert_linear, hostile, mutated, one_line

VALID: dict[str, Any] = yaml.safe_load(textwrap.dedent(TEST_CONFIG))


def loads_or_says_why(path: Path) -> None:
    """The property: a Config, or a ConfigError of one line naming the file."""
    try:
        load_config(path)
    except ConfigError as error:
        assert error.message.startswith(str(path)), error.message
        assert one_line(error.message, limit=1_000_000), error.message[:500]


def as_yaml(value: Any) -> str:
    text = yaml.safe_dump(value, allow_unicode=True, width=1_000_000)
    return text.replace(DEEP, "[" * 1_200 + "]" * 1_200)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=mutated(VALID, hostile(huge=20_000)))
@example(change=((), "replace", {"\n": None}))  # a key with a newline once split the line
@example(change=(("teams", "nlp"), "add", {"a\u2028b": 1}))
def test_any_field_broken_is_accepted_or_one_line(tmp_path: Path, change: Any) -> None:
    path = tmp_path / "nbenv.yaml"
    path.write_text(as_yaml(apply(VALID, *change)), encoding="utf-8", errors="surrogatepass")
    loads_or_says_why(path)


def nested(kind: str, depth: int) -> str:
    if kind == "flow list":
        return "[" * depth + "]" * depth
    if kind == "flow map":
        return "{a: " * depth + "1" + "}" * depth
    return "\n" + "".join("  " * level + "a:\n" for level in range(1, depth)) + "  " * depth + "1"


@pytest.mark.parametrize("kind", ["flow list", "flow map", "block map"])
@pytest.mark.parametrize("where", ["unknown key", "teams"])
def test_nesting_without_end_is_one_line(tmp_path: Path, kind: str, where: str) -> None:
    """Nested 1,500 levels deep: PyYAML's composer recurses once per level."""
    path = tmp_path / "nbenv.yaml"
    config = textwrap.dedent(TEST_CONFIG)
    if where == "teams":
        config = config.replace("teams:\n", f"teams:\n  deep: {nested(kind, 1_500)}\n", 1)
    else:
        config = f"deep: {nested(kind, 1_500)}\n" + config
    path.write_text(config, encoding="utf-8")

    with pytest.raises(ConfigError) as refused:
        load_config(path)

    assert one_line(refused.value.message) and refused.value.message.startswith(str(path))


def test_nesting_deep_enough_to_overflow_a_c_stack_is_one_line(tmp_path: Path) -> None:
    """200,000 levels: libyaml's parser overflowed its stack (a segmentation fault, no
    message); run in a process of its own, as `nbenv` reads it."""
    path = tmp_path / "nbenv.yaml"
    deep = "[" * 200_000 + "]" * 200_000
    path.write_text(f"deep: {deep}\n" + textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    env = {**os.environ, "NBENV_CONFIG": str(path), "NBENV_HOME": str(tmp_path / "home")}

    run = subprocess.run(
        [sys.executable, "-m", "bot", "--as", "U01OWNER", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == ConfigError.exit_code, (run.returncode, run.stderr[-2000:])
    assert one_line(run.stderr.strip()) and "nested more than" in run.stderr, run.stderr


def laughs(levels: int, where: str) -> str:
    """Each alias level ten times the one before: 10**LEVELS values from a few lines."""
    lines = ["x-lol: &a0 [U01OWNER, U01OWNER]"]
    lines += [f"x-l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    config = textwrap.dedent(TEST_CONFIG)
    if where == "users":
        config = config.replace("users: [U06USER]", f"users: *a{levels - 1}", 1)
    return "\n".join(lines) + "\n" + config


@pytest.mark.parametrize("where", ["unknown keys", "users"])
def test_aliases_that_multiply_cost_time_linear_in_the_file(tmp_path: Path, where: str) -> None:
    """Billion laughs: 3 levels or 9 levels of aliases (1,000 or 1,000,000,000 values)
    are read in about the same time, the file being about as long."""

    def load(text: str) -> None:
        path = tmp_path / "laughs.yaml"
        path.write_text(text, encoding="utf-8")
        loads_or_says_why(path)

    assert_linear(load, lambda levels: laughs(levels, where), 3, factor=3)


@pytest.mark.parametrize("shape", ["unknown keys", "members", "images"])
def test_reading_takes_time_linear_in_the_file(tmp_path: Path, shape: str) -> None:
    def config(size: int) -> str:
        base = textwrap.dedent(TEST_CONFIG)
        if shape == "unknown keys":
            return base + "".join(f"x{i}: {i}\n" for i in range(size))
        if shape == "members":
            members = ", ".join(f"U{i:08d}" for i in range(size))
            return base.replace("users: [U06USER]", f"users: [U06USER, {members}]", 1)
        images = "".join(f"  nlp.i{i}: {{team: nlp, channel: C01NLP}}\n" for i in range(size))
        return base + images

    def load(text: str) -> None:
        path = tmp_path / "big.yaml"
        path.write_text(text, encoding="utf-8")
        loads_or_says_why(path)

    assert_linear(load, config, 60)


@given(st.binary(max_size=200))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_bytes_are_accepted_or_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk.yaml"
    path.write_bytes(data)
    loads_or_says_why(path)
