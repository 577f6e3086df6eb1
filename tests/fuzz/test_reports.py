"""Test reports, fuzzed: the JSON that `nbenv publish --report` and the relay accept.
Any field removed, retyped, huge, with control characters, nested without end: the
report is taken (what is malformed in its descriptive parts left out) or refused in one
line, and a refused report changes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings

from bot.builds.events import BadEvent
from bot.builds.report import check_report, summarize
from bot.cli import main
from tests.conftest import IMAGE, OWNER, sha_of
from tests.fuzz.state import snapshot
from tests.fuzz.strategies import apply, assert_linear, encoded, hostile, mutated, one_line

VALID: dict[str, Any] = {
    "python": "3.11.7",
    "packages": [{"name": "numpy", "version": "1.26.4"}, {"name": "keras", "version": "3.0"}],
    "notebooks": [
        {"path": "tests/01_ok.ipynb", "status": "passed", "duration_s": 1.5, "failure": None},
        {
            "path": "tests/02_bad.ipynb",
            "status": "failed",
            "duration_s": 2.25,
            "failure": {
                "cell": 3,
                "line": 2,
                "ename": "KeyError",
                "evalue": "'missing'",
                "traceback": "\x1b[0;31mKeyError\x1b[0m: 'missing'",
            },
        },
    ],
}
_commits = itertools.count()


@settings(max_examples=300, deadline=None)
@given(change=mutated(VALID, hostile(huge=50_000)))
def test_a_report_is_taken_or_refused_in_one_line(change: Any) -> None:
    report = json.loads(encoded(apply(VALID, *change), depth=50))
    try:
        checked = check_report(report)
    except BadEvent as error:
        assert one_line(error.message), error.message
        return
    summary = summarize(checked, "b-1")
    assert summary["passed"] + len(checked["notebooks"]) - summary["passed"] == summary["total"]
    for failure in summary["failures"]:
        assert failure["traceback"] is None or len(failure["traceback"]) <= 900


def test_checking_a_report_takes_time_linear_in_its_size() -> None:
    def report(size: int) -> dict[str, Any]:
        notebook = VALID["notebooks"][1]
        return {**VALID, "notebooks": [notebook] * size, "packages": VALID["packages"] * size}

    assert_linear(lambda r: summarize(check_report(r), "b"), report, 2_000)


# -- nbenv publish --report FILE, on both databases ----------------------------------------


@pytest.fixture
def publish(
    db_url: str, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> Any:
    from bot.bootstrap import build_runtime

    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    monkeypatch.setenv("NBENV_CONFIG", str(config_file))
    runtime = build_runtime(str(config_file), db_url)
    capsys.readouterr()

    def run(content: bytes) -> tuple[int, str, Any, Any]:
        path = tmp_path / "report.json"
        path.write_bytes(content)
        before = snapshot(runtime, IMAGE)
        code = main(
            ["--as", OWNER, "publish", IMAGE, sha_of(f"r{next(_commits)}"), "--report", str(path)]
        )
        return code, capsys.readouterr().err, before, snapshot(runtime, IMAGE)

    return run


def _bytes(report: Any) -> bytes:
    return encoded(report).encode("utf-8", "surrogatepass")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=mutated(VALID, hostile(huge=20_000)))
@example(change=((), "replace", [1]))
@example(change=(("notebooks",), "replace", "x"))
@example(change=(("notebooks", 0), "replace", 1))
@example(change=(("python",), "replace", "3.11\x00"))
@example(change=(("notebooks", 1, "failure", "evalue"), "replace", "\x00\ud800"))
def test_publish_takes_a_report_or_refuses_it_in_one_line_changing_nothing(
    publish: Any, change: Any
) -> None:
    code, err, before, after = publish(_bytes(apply(VALID, *change)))
    if code == 0:
        return
    assert code in (2, 3), err
    assert one_line(err.strip()) and err.startswith("nbenv: "), err
    if code == 2:  # bad input: nothing at all
        assert after == before
    else:  # refused: a version whose tests failed is kept (history), nothing moves
        assert (after.pointers, after.verdicts, after.freeze) == (
            before.pointers,
            before.verdicts,
            before.freeze,
        )
        assert {v for v in after.versions if v not in before.versions} <= {
            v for v in after.versions if not v[1]
        }


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"{" * 5000,
        b"\xff\xfe",
        b"",
        b"null",
        b"1e999999",
        b'{"notebooks": [{"path": "a\\nb", "status": "x\\ny"}]}',
        b'{"notebooks": [{"path": "a\\u2028b", "status": "passed", "failure": 1}]}',
        b'{"notebooks": [{"path": "a", "status": "' + b"x" * 20_000 + b'"}]}',
    ],
    ids=[
        "nested without end",
        "unclosed",
        "not UTF-8",
        "empty",
        "null",
        "huge number",
        "newline in a path",
        "line separator in a path",
        "huge status",
    ],
)
def test_publish_refuses_a_report_that_is_not_one_in_one_line(publish: Any, content: bytes) -> None:
    code, err, before, after = publish(content)

    assert code == 2, err
    assert one_line(err.strip()) and err.startswith("nbenv: "), err
    assert after == before
