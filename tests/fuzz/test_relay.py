"""Build events and test reports to the relay under functions-framework, fuzzed: the
CloudEvent's attributes (ce-* headers, or the fields of a structured event), the Pub/Sub
envelope inside it, and the test report a pipeline publishes — any field removed,
retyped, huge, with control characters, nested without end.

The properties: never a 5xx (Pub/Sub would redeliver it for days) and never a
traceback; what is dropped leaves nothing behind but one log line; what is applied is
the event's own effect (one thread for its commit, a report on its version); and the
time to handle a report grows linearly with it. (The Build resource itself is fuzzed
field by field in tests/builds/test_poison.py.)
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.builds.report import check_report
from tests.builds.conftest import (
    STAGING_STEPS,
    TOKEN,
    attributes_of,
    build_resource,
    event_data,
    new_build_id,
    roots,
)
from tests.builds.process import PUBSUB_SOURCE, PUBSUB_TYPE, FunctionProcess
from tests.builds.test_function import World
from tests.conftest import IMAGE, database_url, sha_of
from tests.fuzz.strategies import (
    apply,
    assert_linear,
    encoded,
    header_text,
    hostile,
    mutated,
)
from tests.fuzz.test_reports import VALID as REPORT
from tests.support.slack_api import FakeSlackApi

FUZZ = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_commits = itertools.count()


class Relay:
    """The function in its own process, its log, and what it has done so far."""

    def __init__(self, world: World, function: FunctionProcess) -> None:
        self.world = world
        self.function = function
        self.log_path = world.folder / "fuzz.log"

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, list[str]]:
        """The answer, and the lines the function logged for it."""
        start = self.log_path.stat().st_size
        status, text = self.function.post(body, {k: v for k, v in headers.items()})
        with self.log_path.open("rb") as log:
            log.seek(start)
            lines = log.read().decode(errors="replace").splitlines()
        return status, text, lines

    def state(self) -> tuple[dict[str, int], int]:
        return self.world.counts(), len(self.world.slack.calls())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def relay(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    folder = tmp_path_factory.mktemp("fuzz-relay")
    url = database_url(request.param, request, folder)
    with FakeSlackApi(token=TOKEN) as slack:
        world = World(folder, url, slack)
        with world.function("fuzz") as function:
            yield Relay(world, function)


def working_build(sha: str) -> dict[str, Any]:
    steps = [
        (s, "SUCCESS" if i < 1 else "WORKING" if i == 1 else None)
        for i, s in enumerate(STAGING_STEPS)
    ]
    return build_resource(new_build_id(), sha, "WORKING", steps=steps)


def check_answered(status: int, lines: list[str]) -> None:
    assert status < 500, (status, "\n".join(lines[-4:]))
    assert not [line for line in lines if "Traceback" in line], lines[-40:]


def check_effect(relay: Relay, before: Any, lines: list[str], sha: str) -> str:
    """Dropped with one line and no trace, or applied: one thread for SHA."""
    if relay.state() == before:
        dropped = [line for line in lines if "relay: dropped" in line or "relay: ignored" in line]
        assert len(dropped) <= 1 and all("\n" not in line for line in dropped), lines
        return "dropped"
    assert len(roots(relay.world.slack, sha)) == 1, lines
    return "applied"


# -- the CloudEvent around the build -----------------------------------------------------------

CE_HEADERS = ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "Content-Type"]


@FUZZ
@given(
    header=st.sampled_from(CE_HEADERS),
    value=st.one_of(st.none(), header_text),
    envelope=st.booleans(),
    data=st.data(),
)
def test_any_binary_cloudevent_is_acknowledged_or_refused_without_a_trace(
    relay: Relay, header: str, value: str | None, envelope: bool, data: Any
) -> None:
    """One ce-* header missing or hostile, and maybe a field of the Pub/Sub envelope."""
    sha = sha_of(f"relay binary {next(_commits)}")
    build = working_build(sha)
    body: Any = event_data(build, attributes_of(build), message_id=str(uuid.uuid4()))
    if envelope:
        body = apply(body, *data.draw(mutated(body, hostile(huge=100_000))))
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-source": PUBSUB_SOURCE,
        "ce-type": PUBSUB_TYPE,
        "ce-time": "2025-03-01T12:00:01.123Z",
    }
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    before = relay.state()

    status, _, lines = relay.post(
        encoded(body, depth=5_000).encode(),
        {k: v.encode("latin-1") for k, v in headers.items()},  # type: ignore[misc]
    )

    check_answered(status, lines)
    check_effect(relay, before, lines, sha)


@FUZZ
@given(data=st.data())
def test_any_structured_cloudevent_is_acknowledged_or_refused_without_a_trace(
    relay: Relay, data: Any
) -> None:
    """A field of the structured event broken: its attributes or its data's envelope."""
    sha = sha_of(f"relay structured {next(_commits)}")
    build = working_build(sha)
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": PUBSUB_SOURCE,
        "type": PUBSUB_TYPE,
        "time": "2025-03-01T12:00:01.123Z",
        "datacontenttype": "application/json",
        "data": event_data(build, attributes_of(build), message_id=str(uuid.uuid4())),
    }
    event = apply(event, *data.draw(mutated(event, hostile(huge=100_000))))
    before = relay.state()

    status, _, lines = relay.post(
        encoded(event, depth=5_000).encode(), {"Content-Type": "application/cloudevents+json"}
    )

    check_answered(status, lines)
    check_effect(relay, before, lines, sha)


# -- test reports --------------------------------------------------------------------------------


def _report_message(report: Any, attributes: Any) -> bytes:
    return json.dumps(event_data(encoded(report, depth=5_000).encode(), attributes)).encode()


def _binary_headers() -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-source": PUBSUB_SOURCE,
        "ce-type": PUBSUB_TYPE,
    }


@FUZZ
@given(in_attributes=st.booleans(), data=st.data())
def test_any_test_report_is_recorded_well_formed_or_dropped_in_one_line(
    relay: Relay, in_attributes: bool, data: Any
) -> None:
    sha = sha_of(f"relay report {next(_commits)}")
    build = working_build(sha)
    status, _, lines = relay.post(
        json.dumps(event_data(build, attributes_of(build))).encode(), _binary_headers()
    )
    assert status == 200, lines
    attributes: Any = {"nbenv": "test-report", "image": IMAGE, "sha": sha, "buildId": build["id"]}
    report: Any = REPORT
    if in_attributes:
        attributes = apply(attributes, *data.draw(mutated(attributes, hostile(huge=10_000))))
    else:
        report = apply(report, *data.draw(mutated(report, hostile(huge=100_000))))
    before = relay.state()

    status, _, lines = relay.post(_report_message(report, attributes), _binary_headers())

    check_answered(status, lines)
    assert not [line for line in lines if "ERROR" in line], lines[-20:]
    with relay.world.runtime.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    if version is not None and version.report is not None:
        # What `diff` and `versions` read later is well-formed.
        assert check_report(version.report) == version.report
    elif relay.state() != before:
        pytest.fail(f"a report that was not recorded changed something: {lines[-10:]}")


def test_a_report_takes_time_linear_in_its_size(relay: Relay) -> None:
    sha = sha_of(f"relay report size {next(_commits)}")
    build = working_build(sha)
    relay.post(json.dumps(event_data(build, attributes_of(build))).encode(), _binary_headers())
    attributes = {"nbenv": "test-report", "image": IMAGE, "sha": sha, "buildId": build["id"]}

    def report(size: int) -> bytes:
        notebooks = [
            {**REPORT["notebooks"][1], "path": f"tests/{i:05d}.ipynb"} for i in range(size)
        ]
        return _report_message({**REPORT, "notebooks": notebooks}, attributes)

    def send(body: bytes) -> None:
        status, _, lines = relay.post(body, _binary_headers())
        assert status == 200, lines

    assert_linear(send, report, 300, floor_s=0.05)


@pytest.mark.parametrize(
    ("mode", "where", "value"),
    [
        ("structured", ("id",), None),
        ("structured", ("specversion",), []),
        ("structured", (), "__deeply_nested__"),
        ("binary", (), "__deeply_nested__"),
    ],
)
def test_a_cloudevent_functions_framework_cannot_read_is_a_400_in_one_line(
    relay: Relay, mode: str, where: tuple[str, ...], value: Any
) -> None:
    """Read by functions-framework before the relay runs: it answered these with a 500
    (Pub/Sub redelivers for days) and a traceback."""
    build = working_build(sha_of(f"unreadable {next(_commits)}"))
    data = event_data(build, attributes_of(build))
    if mode == "binary":
        body, headers = apply(data, where, "replace", value), _binary_headers()
    else:
        event = {"specversion": "1.0", "id": "1", "source": PUBSUB_SOURCE, "type": PUBSUB_TYPE}
        body = apply({**event, "data": data}, where, "replace", value)
        headers = {"Content-Type": "application/cloudevents+json"}
    before = relay.state()

    status, text, lines = relay.post(encoded(body, depth=5_000).encode(), headers)

    assert status == 400, (status, text, lines[-5:])
    check_answered(status, lines)
    assert relay.state() == before
    assert len([line for line in lines if "relay: refused a CloudEvent" in line]) == 1


def test_reading_a_build_event_takes_time_linear_in_its_size() -> None:
    """The parser walks every step and substitution of a Build resource once."""
    from bot.builds.events import decode_pubsub, parse_build

    def message(size: int) -> dict[str, Any]:
        build = working_build(sha_of("linear build"))
        build["steps"] = [dict(build["steps"][0], id=f"step-{i}") for i in range(size)]
        build["substitutions"].update({f"_X{i}": "y" * 20 for i in range(size)})
        return event_data(build, attributes_of(build))

    def read(data: dict[str, Any]) -> None:
        pubsub = decode_pubsub(data)
        parse_build(pubsub.payload, pubsub.attributes)

    assert_linear(read, message, 300)
