"""Poison build events: acknowledged with one log line, and nothing changes.

Every field of the Build resource is untrusted. Hypothesis takes a Build resource as
Cloud Build publishes it, picks any field at any depth and removes it or puts a hostile
value there: a wrong type, a huge value, control characters, NUL, lone surrogates,
nesting without end. The parser must answer with an event or a one-line BadEvent; the
function under functions-framework, on SQLite and PostgreSQL, must answer 2xx, and an
event it drops must leave no trace but one log line. A malformed descriptive field
(subject, times, steps, log link, failure info) must not cost the event its effect: a
SUCCESS on the staging branch still publishes staging.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from bot.builds.events import MAX_TEXT, BadEvent, BuildEvent, NotOurs, decode_pubsub, parse_build
from tests.builds.conftest import (
    STAGING_STEPS,
    TOKEN,
    attributes_of,
    build_resource,
    event_data,
    new_build_id,
    roots,
)
from tests.builds.process import FunctionProcess
from tests.builds.test_function import World, function_env
from tests.conftest import IMAGE, database_url, sha_of
from tests.fuzz.strategies import apply, paths
from tests.support.slack_api import FakeSlackApi

Path_ = tuple[str | int, ...]
DEEP = "__deeply_nested__"  # stands for JSON too deep to build as a Python value
_commits = itertools.count()

# What decides what an event does: when one of these is hostile the event may be dropped.
DECISIVE: set[Path_] = {
    (),
    ("id",),
    ("status",),
    ("createTime",),
    ("substitutions",),
    ("substitutions", "_IMAGE_NAME"),
    ("substitutions", "COMMIT_SHA"),
}
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def template(kind: str, sha: str) -> dict[str, Any]:
    """A Build resource as Cloud Build publishes it: a running build, a success on the
    staging branch, or a failure with failureInfo."""
    build_id = new_build_id()
    if kind == "working":
        steps = [
            (s, "SUCCESS" if i < 2 else "WORKING" if i == 2 else None)
            for i, s in enumerate(STAGING_STEPS)
        ]
        return build_resource(build_id, sha, "WORKING", steps=steps, subject="Bump numpy")
    if kind == "success":
        steps = [(s, "SUCCESS") for s in STAGING_STEPS]
        return build_resource(build_id, sha, "SUCCESS", steps=steps, subject="Bump numpy")
    steps = [
        (s, "SUCCESS" if i < 2 else "FAILURE" if i == 2 else None)
        for i, s in enumerate(STAGING_STEPS)
    ]
    failure = {"type": "USER_BUILD_STEP", "detail": "Build step failure: step 2 failed"}
    return build_resource(build_id, sha, "FAILURE", steps=steps, failure=failure, branch="feature")


NASTY_TEXT = st.lists(
    st.sampled_from(
        [
            "a",
            "é",
            "\x00",
            "\ud800",
            "\udcff",
            "\n",
            "\r",
            "\x1b[31m",
            "\u2028",
            "\x7f",
            "\x85",
            "<!channel>",
            "|>",
            "`",
            "*",
            "\u202e",
            "😀",
            " ",
        ]
    ),
    max_size=12,
).map("".join)
HUGE = st.builds(
    lambda piece, times: piece * times,
    st.sampled_from(["a", "\x00", "é", "[", "https://x/"]),
    st.sampled_from([1_000, 100_000]),
)
PLAUSIBLE = st.sampled_from(
    [
        "",
        "SUCCESS",
        "WORKING",
        "STATUS_UNKNOWN",
        "staging",
        "main",
        "nlp.keras-batch",
        sha_of("plausible"),
        "2025-03-01T12:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "yesterday",
        "https://evil.example/|x>",
    ]
)
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    NASTY_TEXT,
    HUGE,
    PLAUSIBLE,
    st.just(DEEP),
    st.lists(st.one_of(st.integers(), NASTY_TEXT), max_size=3),
    st.dictionaries(NASTY_TEXT, st.one_of(st.integers(), NASTY_TEXT, st.none()), max_size=3),
    st.just({"type": "x", "detail": {"nested": ["deeper"]}}),
)


@st.composite
def mutated(draw: st.DrawFn, build: dict[str, Any]) -> tuple[Path_, str, Any]:
    """A field of BUILD to break, and how: removed, replaced, or given a new sibling."""
    every = list(paths(build))
    decisive = [where for where in every if where in DECISIVE]
    # A third of the draws break a decisive field: there are far fewer of them.
    where = draw(
        st.one_of(st.sampled_from(every), st.sampled_from(every), st.sampled_from(decisive))
    )
    how = draw(st.sampled_from(["remove", "replace", "replace", "add"]))
    return where, how, draw(HOSTILE)


def encoded(build: Any) -> bytes:
    """BUILD as JSON, DEEP replaced by arrays nested 100,000 deep (RecursionError bait)."""
    text = json.dumps(build, ensure_ascii=True)
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()


def changes_decision(where: Path_, how: str) -> bool:
    return where in DECISIVE or (how == "add" and where == ())


# -- the parser ----------------------------------------------------------------------------


def check_event(event: BuildEvent) -> None:
    for value in (event.subject, event.failure_type, event.failure_detail, event.branch):
        if value is not None:
            assert len(value) <= MAX_TEXT and not _UNPRINTABLE.search(value), repr(value)
    for step in event.steps:
        assert len(step.label) <= 80 and not _UNPRINTABLE.search(step.label)
    if event.log_url is not None:
        assert len(event.log_url) <= 2000 and not _UNPRINTABLE.search(event.log_url)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["working", "success", "failure"]), data=st.data())
def test_the_parser_answers_an_event_or_a_one_line_reason(kind: str, data: st.DataObject) -> None:
    build = template(kind, sha_of("parser"))
    where, how, value = data.draw(mutated(build))
    raw = event_data(encoded(apply(build, where, how, value)), attributes_of(build))

    try:
        message = decode_pubsub(raw)
        event = parse_build(message.payload, message.attributes)
    except (BadEvent, NotOurs) as error:
        reason = str(error.message if isinstance(error, BadEvent) else error)
        assert len(reason) < 400 and not _UNPRINTABLE.search(reason), reason
        assert changes_decision(where, how) or value == DEEP, (where, how, reason)
        return
    check_event(event)
    if not changes_decision(where, how):
        # A broken descriptive field costs the event nothing that decides what it does.
        assert (event.build_id, event.status, event.image, event.sha, event.created) == (
            build["id"],
            build["status"],
            IMAGE,
            build["substitutions"]["COMMIT_SHA"],
            parse_build(build).created,
        )


@pytest.mark.parametrize(
    "where",
    [
        ("substitutions", "_COMMIT_SUBJECT"),
        ("substitutions", "BRANCH_NAME"),
        ("failureInfo", "detail"),
        ("failureInfo", "type"),
        ("steps", 0, "id"),
        ("steps", 1, "name"),
        ("logUrl",),
    ],
)
@pytest.mark.parametrize("bad", ["\x00", "\x85", "\ud800", "\u2028", "\x1b[31m", "\n"])
def test_no_unprintable_character_gets_past_the_parser(where: Path_, bad: str) -> None:
    build = template("failure", sha_of("unprintable"))
    copy = apply(build, where, "replace", f"a{bad}b")

    event = parse_build(json.loads(encoded(copy)))

    check_event(event)


def test_json_nested_without_end_is_a_bad_event() -> None:
    deep = event_data(b"[" * 100_000 + b"]" * 100_000, {})
    with pytest.raises(BadEvent, match="nested too deeply"):
        decode_pubsub(deep)
    # Deep enough to break what walks it next (str, json.dumps), not json.loads itself.
    with pytest.raises(BadEvent, match="nested more than 32 levels"):
        decode_pubsub(event_data(b"[" * 500 + b"]" * 500, {}))


# -- the function, as Cloud Functions runs it ---------------------------------------------


class FunctionWorld:
    def __init__(self, world: World, function: FunctionProcess) -> None:
        self.world = world
        self.function = function
        self.log_path = world.folder / "poison.log"
        self.log_offset = 0

    def send(self, payload: Any, attributes: dict[str, str], mode: str = "binary") -> int:
        self.log_offset = self.log_path.stat().st_size
        data = event_data(payload, attributes, message_id=str(uuid.uuid4()))
        status, _ = getattr(self.function, mode)(data)
        return status

    def new_log(self) -> list[str]:
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace").splitlines()

    def staging(self) -> str | None:
        return self.world.environments()["staging"]["sha"]

    def state(self) -> tuple[dict[str, int], int]:
        return self.world.counts(), len(self.world.slack.calls())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionWorld]:
    folder = tmp_path_factory.mktemp("poison")
    url = database_url(request.param, request, folder)
    with FakeSlackApi(token=TOKEN) as slack:
        world = World(folder, url, slack)
        with world.function("poison") as function:
            yield FunctionWorld(world, function)


def dropped_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "relay: dropped" in line or "relay: ignored" in line]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["working", "success", "failure"]),
    mode=st.sampled_from(["binary", "structured", "push"]),
    data=st.data(),
)
def test_the_function_acknowledges_any_build_and_drops_poison_without_a_trace(
    fn: FunctionWorld, kind: str, mode: str, data: st.DataObject
) -> None:
    sha = sha_of(f"poison {next(_commits)}")
    build = template(kind, sha)
    where, how, value = data.draw(mutated(build))
    before = fn.state()

    status = fn.send(encoded(apply(build, where, how, value)), attributes_of(build), mode)

    assert status == 200, fn.function.log()
    lines = fn.new_log()
    assert not [line for line in lines if "Traceback" in line or "ERROR" in line], lines
    if fn.state() == before:
        # Dropped: one line says so, and nothing changed (no thread, message, version).
        event("dropped")
        (line,) = dropped_lines(lines)
        assert "\n" not in line
        assert changes_decision(where, how) or value == DEEP, (where, how, lines)
    else:
        event("applied")
        assert dropped_lines(lines) == [], lines
        assert len(roots(fn.world.slack, sha)) == 1
        publishes = kind == "success" and where != ("substitutions", "BRANCH_NAME")
        if publishes and not changes_decision(where, how):
            # A SUCCESS on the staging branch publishes, whatever else is broken.
            assert fn.staging() == sha, (where, how, lines)


# -- the cases that used to be a 500 (each redelivered by Pub/Sub for seven days) ----------


def test_failure_info_that_is_not_an_object_still_reports_the_failure(fn: FunctionWorld) -> None:
    sha = sha_of(f"failureInfo boom {uuid.uuid4()}")
    build = {**template("failure", sha), "failureInfo": "boom"}

    assert fn.send(build, attributes_of(build)) == 200

    (root,) = roots(fn.world.slack, sha)
    assert "*FAILURE*" in root.text
    assert any("left out malformed failureInfo" in line for line in fn.new_log())


def test_deeply_nested_json_is_dropped_in_one_line(fn: FunctionWorld) -> None:
    before = fn.state()

    assert fn.send(b"[" * 100_000 + b"]" * 100_000, {"buildId": "b-deep"}) == 200

    assert fn.state() == before
    (line,) = dropped_lines(fn.new_log())
    assert "nested too deeply" in line


@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["NUL", "lone surrogate"])
def test_a_bad_character_in_the_commit_subject_does_not_block_staging(
    fn: FunctionWorld, bad: str
) -> None:
    sha = sha_of(f"subject {bad!r} {uuid.uuid4()}")
    build = template("success", sha)
    build["substitutions"]["_COMMIT_SUBJECT"] = f"Bump{bad}numpy"

    assert fn.send(build, attributes_of(build)) == 200

    assert fn.staging() == sha
    with fn.world.runtime.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    assert version is not None and version.subject == "Bump numpy"


# -- what can heal is retried ---------------------------------------------------------------


@pytest.mark.postgres
def test_a_lock_timeout_is_a_5xx_so_pubsub_redelivers_and_the_retry_applies(
    pg_cluster: Any, tmp_path: Any
) -> None:
    url = pg_cluster.create_database(f"heal_{uuid.uuid4().hex[:10]}")
    with FakeSlackApi(token=TOKEN) as slack:
        world = World(tmp_path, url, slack)
        env = function_env(world.config, url, slack, tmp_path / "home")
        # Every connection of the function gives up waiting for a lock after 300 ms.
        env["PGOPTIONS"] = "-c lock_timeout=300"
        with FunctionProcess(env, log_path=tmp_path / "heal.log").start() as function:
            sha = sha_of(f"heal {uuid.uuid4()}")
            build = template("working", sha)
            data = event_data(build, attributes_of(build))
            engine = world.runtime.store.engine
            with engine.connect() as holder:
                # Another transaction holds the threads table longer than the timeout.
                holder.execute(text("LOCK TABLE slack_threads IN ACCESS EXCLUSIVE MODE"))
                status, _ = function.binary(data)
                holder.rollback()
            assert status == 500  # Pub/Sub will deliver it again
            assert roots(slack, sha) == []

            assert function.binary(data) == (200, "OK")  # and the retry applies it
            assert len(roots(slack, sha)) == 1


# -- test reports ---------------------------------------------------------------------------


def test_malformed_packages_of_a_test_report_are_left_out(fn: FunctionWorld) -> None:
    sha = sha_of(f"report packages {uuid.uuid4()}")
    build = template("working", sha)
    assert fn.send(build, attributes_of(build)) == 200
    body = {
        "python": ["3.11"],
        "packages": [1, "numpy==1.0", {"name": {"x": 1}}, {"name": "keras", "version": "3.0"}],
        "notebooks": [{"path": "notebooks/t.ipynb", "status": "passed", "failure": None}],
    }
    attributes = {"nbenv": "test-report", "image": IMAGE, "sha": sha, "buildId": build["id"]}

    assert fn.send(body, attributes) == 200

    with fn.world.runtime.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    # What `diff` reads later is well-formed: the package list and the Python version.
    assert version is not None and version.report is not None
    assert version.report["packages"] == [{"name": "keras", "version": "3.0"}]
    assert "python" not in version.report


_GITHUB_URL = "https://github.com/acme/notebooks.git"


@pytest.mark.parametrize(
    ("field", "where"),
    [
        ("resolvedGitSource", {"sourceProvenance": {"resolvedGitSource": {"revision": "{sha}"}}}),
        (
            "resolvedConnectedRepository",
            {"sourceProvenance": {"resolvedConnectedRepository": {"revision": "{sha}"}}},
        ),
        (
            "resolvedRepoSource",
            {"sourceProvenance": {"resolvedRepoSource": {"commitSha": "{sha}"}}},
        ),
        ("gitSource", {"source": {"gitSource": {"url": _GITHUB_URL, "revision": "{sha}"}}}),
    ],
)
def test_without_commit_sha_the_commit_is_found_wherever_cloud_build_put_it(
    field: str, where: dict[str, Any]
) -> None:
    """GitHub-triggered builds (resolvedGitSource), 2nd-gen repositories
    (resolvedConnectedRepository) and builds of a pinned revision (source.gitSource)
    name their commit in different places: each one is read."""
    sha = sha_of(field)
    build = build_resource(new_build_id(), sha, "SUCCESS")
    del build["substitutions"]["COMMIT_SHA"], build["sourceProvenance"]
    build["source"] = {"gitSource": {"url": _GITHUB_URL, "revision": "staging"}}
    build.update(json.loads(json.dumps(where).replace("{sha}", sha.upper())))

    assert parse_build(build).sha == sha


@pytest.mark.parametrize("junk", [None, 7, ["a"], {"x": 1}, "staging", "abc123", "g" * 40])
def test_a_malformed_revision_is_passed_over_for_the_next_place(junk: Any) -> None:
    sha = sha_of("next place")
    build = build_resource(new_build_id(), sha, "SUCCESS")
    del build["substitutions"]["COMMIT_SHA"]
    build["sourceProvenance"] = {
        "resolvedGitSource": {"revision": junk},
        "resolvedConnectedRepository": junk,
        "resolvedRepoSource": {"commitSha": sha},
    }
    assert parse_build(build).sha == sha
    build["sourceProvenance"]["resolvedRepoSource"] = junk
    with pytest.raises(BadEvent, match="COMMIT_SHA None is missing"):
        parse_build(build)
