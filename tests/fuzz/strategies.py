"""What the fuzz tests throw at nbenv, shared by every surface.

Hostile values are general, not the cases found so far: text with control characters,
NUL, lone surrogates, bidi overrides and Slack's markup; values of every JSON type where
another is expected; huge values; nesting without end. `mutated` takes a well-formed
input (a payload, an event, a report, a config) and breaks one field at any depth —
removes it, replaces it with a hostile value, or adds a hostile sibling — so that every
field is tried, decisive or descriptive.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import strategies as st

Path_ = tuple[str | int, ...]
DEEP = "__deeply_nested__"  # stands for JSON too deep to build as a Python value
DEEP_LEVELS = 100_000

# One character of each kind a parser or a renderer trips over.
NASTY_CHARS = [
    "a",
    "Z",
    "0",
    "é",
    "ß",
    " ",
    "\t",
    "\n",
    "\r",
    "\x00",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\u2029",
    "\u202e",
    "\ufeff",
    "\ud800",
    "\udcff",
    "😀",
    "１",
    "²",
    "'",
    '"',
    "\\",
    "`",
    "*",
    "_",
    "~",
    "<",
    ">",
    "|",
    "&",
    "=",
    "%",
    "+",
    "-",
    "--",
    "<!channel>",
    "<@U01OWNER>",
    "${HOME}",
    "{}",
    "[]",
]
nasty_text = st.lists(st.sampled_from(NASTY_CHARS), max_size=16).map("".join)
any_text = st.one_of(nasty_text, st.text(max_size=40))


def huge_text_up_to(size: int) -> st.SearchStrategy[str]:
    """Text far longer than any field needs: SIZE characters, or a fortieth of that."""
    return st.builds(
        lambda piece, times: piece * times,
        st.sampled_from(["a", "\x00", "é", "[", " ", "'", "\\", "--x ", "https://x/"]),
        st.sampled_from([max(size // 40, 1), size]),
    )


def hostile(huge: int = 200_000) -> st.SearchStrategy[Any]:
    """Any value where another is expected: of every JSON type, HUGE, nested without end."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),  # json.dumps writes NaN, which is not JSON at all
        any_text,
        huge_text_up_to(huge),
    )
    return st.one_of(
        scalars,
        st.just(DEEP),
        st.lists(st.one_of(st.integers(), nasty_text, st.none()), max_size=3),
        st.dictionaries(nasty_text, st.one_of(st.integers(), nasty_text, st.none()), max_size=3),
        st.recursive(
            st.one_of(st.none(), st.integers(), nasty_text),
            lambda inner: st.one_of(
                st.lists(inner, max_size=2), st.dictionaries(nasty_text, inner, max_size=2)
            ),
            max_leaves=6,
        ),
    )


huge_text = huge_text_up_to(200_000)
hostile_values = hostile()


# -- breaking one field of a well-formed input -----------------------------------------------


def paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every field at every depth, the value itself first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


@st.composite
def mutated(
    draw: st.DrawFn, template: Any, values: st.SearchStrategy[Any] = hostile_values
) -> tuple[Path_, str, Any]:
    """A field of TEMPLATE to break, and how: removed, replaced, or given a new sibling."""
    where = draw(st.sampled_from(list(paths(template))))
    how = draw(st.sampled_from(["remove", "replace", "replace", "add"]))
    return where, how, draw(values)


def apply(template: Any, where: Path_, how: str, value: Any) -> Any:
    """A copy of TEMPLATE with the mutation applied."""
    copy = json.loads(json.dumps(template))
    if not where:
        return value if how == "replace" else copy
    parent = copy
    for key in where[:-1]:
        parent = parent[key]
    last = where[-1]
    if how == "remove":
        del parent[last]
    elif how == "replace":
        parent[last] = value
    elif isinstance(parent, dict):
        parent[f"junk{len(parent)}"] = value
    else:
        parent.append(value)
    return copy


def encoded(value: Any, depth: int = DEEP_LEVELS) -> str:
    """VALUE as JSON text, DEEP replaced by arrays nested DEPTH deep (RecursionError
    bait), lone surrogates kept as JSON escapes (as a hostile client can send them)."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)


def touches(where: Path_, how: str, fields: set[Path_]) -> bool:
    """Whether breaking WHERE changes one of FIELDS (or what contains them)."""
    if how == "add" and where == ():
        return True
    return any(where == field[: len(where)] for field in fields)


# -- the slash command's text --------------------------------------------------------------

COMMAND_NAMES = [
    "help",
    "status",
    "versions",
    "build",
    "approve",
    "reject",
    "promote",
    "rollback",
    "instance",
    "instances",
    "history",
    "diff",
    "freeze",
    "unfreeze",
]
FLAGS = ["--to", "--reason", "--env", "--name", "--stop", "--dry-run", "--force", "--json"]
FLAGS += ["--yes", "--", "--to=", "--reason=", "--env=staging", "--unknown", "-x"]
_word = st.one_of(
    st.sampled_from(COMMAND_NAMES),
    st.sampled_from([name.upper() for name in COMMAND_NAMES]),
    st.sampled_from(FLAGS),
    st.sampled_from(["nlp.keras-batch", "NLP.KERAS-BATCH", "nlp..x", "a" * 129, "x/y"]),
    st.sampled_from(["staging", "production", "fallback", "prod", "0" * 40, "abc1234", "g" * 40]),
    st.sampled_from(["'", '"', "\\", "'a b'", '"a \\" b"', "\\ ", "''", '""']),
    nasty_text,
)
_separator = st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\xa0", "\u3000", ""])


@st.composite
def command_text(draw: st.DrawFn, image: str = "nlp.keras-batch") -> str:
    """Text after `/nbenv`: words of the grammar (about IMAGE) and hostile ones, oddly
    separated."""
    words = draw(st.lists(st.one_of(_word, st.just(image)), max_size=8))
    text = ""
    for word in words:
        text += word + draw(_separator)
    return draw(_separator) + text


# -- HTTP headers --------------------------------------------------------------------------

# What an HTTP client can put in a header value (latin-1, no CR/LF, no leading blank:
# requests refuses those, and HTTP drops the blank anyway).
header_text = st.one_of(
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=40,
    ),
    st.sampled_from(["", "v0=", "v1=" + "0" * 64, "v0=" + "g" * 64, "²", "1e9", "-1", "0"]),
    st.builds(lambda d: "9" * d, st.sampled_from([13, 400, 7000])),
).map(lambda value: value.lstrip(" \t"))


# -- time linear in the input's size -------------------------------------------------------


def seconds(run: Callable[[], Any], repeat: int = 3) -> float:
    """The median time of REPEAT runs of RUN (a noisy, loaded machine: the median)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def assert_linear(
    run: Callable[[Any], Any],
    make: Callable[[int], Any],
    size: int,
    *,
    factor: int = 10,
    slack: float = 4.0,
    floor_s: float = 0.002,
) -> None:
    """RUN takes time linear in the size of its input: MAKE(SIZE * FACTOR) takes at most
    FACTOR * SLACK times as long as MAKE(SIZE) (quadratic would be FACTOR² times).
    FLOOR_S: times this short are noise, counted as FLOOR_S."""
    small, large = make(size), make(size * factor)
    run(small)  # warm-up: imports, caches, compiled regular expressions
    t_small = max(seconds(lambda: run(small)), floor_s)
    t_large = seconds(lambda: run(large))
    assert t_large <= factor * slack * t_small, (
        f"{factor}× the input took {t_large / t_small:.1f}× the time "
        f"({t_small * 1000:.1f} ms → {t_large * 1000:.1f} ms): not linear"
    )


def one_line(message: str, limit: int = 10_000) -> bool:
    """A message a person can read: one line (by every line break Python knows: \\n, \\r,
    \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028, \\u2029), not empty, not endless."""
    return bool(message.strip()) and len(message.splitlines()) == 1 and len(message) <= limit
