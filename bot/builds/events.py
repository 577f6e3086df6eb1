"""Cloud Build events: the Pub/Sub envelope and the Build resource, parsed and checked.

Pure: no I/O. Every field is untrusted: any type, missing, huge, control characters,
nested without end. Sizes are bounded and parsing is linear.

What decides what an event does (the build id, its status, the image, the commit, its
creation time, which orders builds of one commit) must be right, or the event raises
`BadEvent` with a short one-line reason: the relay logs it and acknowledges the message
(a retry would fail the same way), and nothing changes. What only describes the build
(the commit subject, branch, start and finish times, steps, log link, failure info) is
kept when well-formed and otherwise left out, noted in `BuildEvent.ignored`: a malformed
`steps[3]` or a NUL in the commit subject does not stop a SUCCESS from publishing
staging. A malformed branch counts as missing: a SUCCESS then acts on the branch an
earlier event of the same build named, or does nothing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.domain.errors import BadInput
from bot.domain.names import BUILD_ID, image_name_problem, is_full_sha

# Cloud Build's Build.Status, in the order a build moves through them. All terminal
# statuses share the top rank: a build reaches exactly one of them.
RANKS = {
    "PENDING": 1,
    "QUEUED": 2,
    "WORKING": 3,
    "SUCCESS": 4,
    "FAILURE": 4,
    "INTERNAL_ERROR": 4,
    "TIMEOUT": 4,
    "CANCELLED": 4,
    "EXPIRED": 4,
}
TERMINAL = frozenset(status for status, rank in RANKS.items() if rank == 4)
FAILED = TERMINAL - {"SUCCESS"}
STEP_FAILED = frozenset({"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"})

# The attribute that marks a test report on the reports topic (see config/cloudbuild).
KIND_ATTRIBUTE = "nbenv"
REPORT_KIND = "test-report"

MAX_TEXT = 500
MAX_STEPS = 300  # more than Cloud Build allows in one build
# Pub/Sub's own limit: a larger message did not come through Pub/Sub.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
# A Build resource nests 5 levels deep, a test report 4: deeper is not ours, and would
# exhaust the recursion of whatever walks it next (str(), json.dumps, the audit hash).
MAX_DEPTH = 32
MAX_ATTRIBUTES = 100  # Pub/Sub allows 100 attributes per message
# One line of text: control characters (C0, DEL, C1), line and paragraph separators, and
# lone surrogates (from `\udXXX` escapes) each become one space.
_NOT_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# What `git check-ref-format --branch` accepts, roughly: no control characters, spaces or
# the characters git reserves.
_BRANCH = re.compile(r"[^\x00-\x20\x7f-\x9f\u2028\u2029\ud800-\udfff~^:?*\[\\]{1,255}")
_TIMESTAMP_CHARS = 40


class BadEvent(BadInput):
    """The event cannot be understood: logged and acknowledged, nothing changes."""


class NotOurs(Exception):
    """A well-formed build that nbenv does not manage (no _IMAGE_NAME)."""


@dataclass(frozen=True)
class Step:
    label: str
    status: str | None  # None until the step is scheduled
    start: str | None = None
    end: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def begun(self) -> bool:
        return self.status == "WORKING" or self.done


@dataclass(frozen=True)
class BuildEvent:
    build_id: str
    status: str
    image: str
    sha: str
    branch: str | None = None
    subject: str | None = None
    created: str = ""  # normalised UTC timestamp; "" sorts before any real one
    started: str | None = None
    finished: str | None = None
    steps: tuple[Step, ...] = ()
    log_url: str | None = None
    failure_type: str | None = None
    failure_detail: str | None = None
    # Descriptive fields that were malformed and left out (for the log line), e.g. `steps[3]`.
    ignored: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        return RANKS[self.status]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def order(self) -> tuple[str, str]:
        """Which build of a commit is newer: later createTime, then build ID to break ties."""
        return (self.created, self.build_id)

    @property
    def progress(self) -> tuple[int, int, int]:
        """How far this build has got; a build never moves back along it."""
        return (
            self.rank,
            sum(1 for step in self.steps if step.done),
            sum(1 for step in self.steps if step.begun),
        )

    def failing_step(self) -> Step | None:
        return next((step for step in self.steps if step.status in STEP_FAILED), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.build_id,
            "status": self.status,
            "branch": self.branch,
            "subject": self.subject,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "steps": [[s.label, s.status, s.start, s.end] for s in self.steps],
            "log_url": self.log_url,
            "failure_type": self.failure_type,
            "failure_detail": self.failure_detail,
        }

    @classmethod
    def from_json(cls, image: str, sha: str, data: Mapping[str, Any]) -> BuildEvent:
        return cls(
            build_id=data["id"],
            status=data["status"],
            image=image,
            sha=sha,
            branch=data.get("branch"),
            subject=data.get("subject"),
            created=data.get("created") or "",
            started=data.get("started"),
            finished=data.get("finished"),
            steps=tuple(Step(*item) for item in data.get("steps") or ()),
            log_url=data.get("log_url"),
            failure_type=data.get("failure_type"),
            failure_detail=data.get("failure_detail"),
        )


@dataclass(frozen=True)
class PubsubMessage:
    payload: Any
    attributes: dict[str, str]
    message_id: str | None = None

    @property
    def is_report(self) -> bool:
        return self.attributes.get(KIND_ATTRIBUTE) == REPORT_KIND


# -- the Pub/Sub envelope -------------------------------------------------------------------


def decode_pubsub(data: Any) -> PubsubMessage:
    """The JSON payload and attributes of a `messagePublished` CloudEvent's data."""
    if isinstance(data, bytes | str):
        data = _json(data, "event data")
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise BadEvent("event data has no Pub/Sub message")
    message = data["message"]
    raw = message.get("data")
    if not isinstance(raw, str) or not raw:
        raise BadEvent("Pub/Sub message has no data")
    if len(raw) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise BadEvent(f"Pub/Sub message data is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadEvent("Pub/Sub message data is not base64") from None
    payload = _json(decoded, "Pub/Sub message data")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or len(attributes) > MAX_ATTRIBUTES:
        raise BadEvent("Pub/Sub message attributes are not a mapping of text")
    message_id = message.get("messageId") or message.get("message_id")
    return PubsubMessage(
        payload,
        # Pub/Sub attributes are text: anything else is left out.
        {
            k[:256]: v[:1024]
            for k, v in attributes.items()
            if isinstance(k, str) and isinstance(v, str)
        },
        _one_line(message_id, 100) if isinstance(message_id, str | int) else None,
    )


def _json(text: str | bytes, what: str) -> Any:
    """TEXT parsed as JSON nested at most MAX_DEPTH deep."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise BadEvent(f"{what} is not JSON") from None
    except RecursionError:
        raise BadEvent(f"{what} is nested too deeply") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise BadEvent(f"{what} is nested more than {MAX_DEPTH} levels deep")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether VALUE nests deeper than LIMIT; iterative, so any depth is safe to check."""
    # Only objects and arrays go on the stack; a plain loop, as it runs for every event.
    stack = [(value, 1)] if isinstance(value, _CONTAINERS) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


_CONTAINERS = (dict, list)  # what json.loads nests


# -- the Build resource ---------------------------------------------------------------------


def parse_build(build: Any, attributes: Mapping[str, str] | None = None) -> BuildEvent:
    """A Build resource (as Cloud Build publishes it) → BuildEvent.

    Raises NotOurs for builds without `_IMAGE_NAME`, BadEvent when what decides what the
    event does is malformed; descriptive fields that are malformed are left out.
    """
    attributes = attributes or {}
    if not isinstance(build, Mapping):
        raise BadEvent("the build is not a JSON object")
    build_id = build.get("id") or attributes.get("buildId")
    if not isinstance(build_id, str) or not BUILD_ID.fullmatch(build_id):
        raise BadEvent(f"build id {_shown(build_id)} is missing or malformed")
    status = build.get("status") or attributes.get("status")
    if not isinstance(status, str) or status not in RANKS:
        raise BadEvent(f"build {build_id}: unknown status {_shown(status)}")
    substitutions = build.get("substitutions") or {}
    if not isinstance(substitutions, Mapping):
        raise BadEvent(f"build {build_id}: substitutions is not a mapping")
    image = substitutions.get("_IMAGE_NAME")
    if not image:
        raise NotOurs(f"build {build_id} has no _IMAGE_NAME substitution")
    if not isinstance(image, str) or image_name_problem(image[:200]) or len(image) > 200:
        raise BadEvent(f"build {build_id}: _IMAGE_NAME {_shown(image)} is not an image name")
    sha = substitutions.get("COMMIT_SHA") or _provenance_sha(build)
    if not isinstance(sha, str) or len(sha) != 40 or not is_full_sha(sha.lower()):
        raise BadEvent(f"build {build_id}: COMMIT_SHA {_shown(sha)} is missing or not a full SHA")
    ignored: list[str] = []

    def optional(name: str, value: Any, parse: Any) -> Any:
        try:
            return parse(value)
        except BadEvent:
            ignored.append(name)
            return None

    failure = build.get("failureInfo")
    if failure is not None and not isinstance(failure, Mapping):
        ignored.append("failureInfo")
        failure = None
    failure = failure or {}
    return BuildEvent(
        build_id=build_id,
        status=status,
        image=image,
        sha=sha.lower(),
        branch=optional("BRANCH_NAME", substitutions.get("BRANCH_NAME"), _branch),
        subject=optional("_COMMIT_SUBJECT", substitutions.get("_COMMIT_SUBJECT"), _text),
        created=_created(build_id, build.get("createTime")),
        started=optional("startTime", build.get("startTime"), parse_time),
        finished=optional("finishTime", build.get("finishTime"), parse_time),
        steps=_steps(build.get("steps"), ignored),
        log_url=optional("logUrl", build.get("logUrl"), _log_url),
        failure_type=optional("failureInfo.type", failure.get("type"), _text),
        failure_detail=optional("failureInfo.detail", failure.get("detail"), _text),
        ignored=tuple(ignored),
    )


def _created(build_id: str, value: Any) -> str:
    # Decides which of two builds of a commit is the newer one: not merely descriptive.
    try:
        return parse_time(value) or ""
    except BadEvent as error:
        raise BadEvent(f"build {build_id}: createTime: {error.message}") from None


# Where a Build names its commit when `substitutions.COMMIT_SHA` is missing, resolved
# ones first (google.devtools.cloudbuild.v1, cloudbuild_v1/types/cloudbuild.py):
# SourceProvenance.resolved_git_source (GitHub triggers), .resolved_connected_repository
# (2nd-gen repositories) and .resolved_repo_source (Cloud Source Repositories) hold the
# commit the build fetched; Source.git_source and .connected_repository hold the revision
# asked for, which counts only when it already is a full SHA (it may be a branch).
_SHA_PATHS = (
    ("sourceProvenance", "resolvedGitSource", "revision"),
    ("sourceProvenance", "resolvedConnectedRepository", "revision"),
    ("sourceProvenance", "resolvedRepoSource", "commitSha"),
    ("source", "gitSource", "revision"),
    ("source", "connectedRepository", "revision"),
)


def _provenance_sha(build: Mapping[str, Any]) -> str | None:
    """The first full commit SHA at one of _SHA_PATHS; anything else there is left out."""
    for path in _SHA_PATHS:
        value: Any = build
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, str) and len(value) == 40 and is_full_sha(value.lower()):
            return value
    return None


def _shown(value: Any) -> str:
    """VALUE for a one-line reason: short text quoted, anything else by its type."""
    if isinstance(value, str):
        return repr(value[:60] + ("…" if len(value) > 60 else ""))
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:60]
    return f"<{type(value).__name__}>"


def _one_line(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return _NOT_ONE_LINE.sub(" ", text[:limit])


def _text(value: Any) -> str | None:
    """Descriptive text: at most MAX_TEXT characters on one line."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadEvent(f"expected text, got {type(value).__name__}")
    text = _one_line(value, MAX_TEXT).strip()
    return text or None


def _branch(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _BRANCH.fullmatch(value[:256]):
        raise BadEvent(f"branch {_shown(value)} is not a branch name")
    return value


def parse_time(value: Any) -> str | None:
    """An RFC 3339 timestamp → fixed-width UTC text that sorts in time order."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _TIMESTAMP_CHARS:
        raise BadEvent(f"{_shown(value)} is not a timestamp")
    return _utc_text(value)


@functools.lru_cache(maxsize=4096)
def _utc_text(value: str) -> str:
    # Cached: every event of a build repeats the times its earlier events gave (created,
    # started, each step's), and a build publishes an event per step.
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # OverflowError: a time zone that moves year 1 or 9999 out of range.
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (ValueError, OverflowError):
        raise BadEvent(f"{_shown(value)} is not a timestamp") from None


def _steps(steps: Any, ignored: list[str]) -> tuple[Step, ...]:
    """The build's steps; a malformed step keeps its place with no status or times."""
    if steps is None:
        return ()
    if not isinstance(steps, list):
        ignored.append("steps")
        return ()
    if len(steps) > MAX_STEPS:
        ignored.append(f"steps[{MAX_STEPS}:]")
    parsed = []
    for index, step in enumerate(steps[:MAX_STEPS]):
        try:
            parsed.append(_step(step, index + 1))
        except BadEvent:
            ignored.append(f"steps[{index}]")
            label = _step_label(step, index + 1) if isinstance(step, Mapping) else None
            parsed.append(Step(label or f"step {index + 1}", None))
    return tuple(parsed)


def _step(step: Any, number: int) -> Step:
    if not isinstance(step, Mapping):
        raise BadEvent(f"step {number} is not an object")
    status = step.get("status")
    if status in (None, "", "STATUS_UNKNOWN"):
        status = None
    elif not isinstance(status, str) or status not in RANKS:
        raise BadEvent(f"step {number} has unknown status {_shown(status)}")
    timing = step.get("timing") or {}
    if not isinstance(timing, Mapping):
        raise BadEvent(f"step {number} timing is not an object")
    start, end = parse_time(timing.get("startTime")), parse_time(timing.get("endTime"))
    return Step(_step_label(step, number), status, start, end)


def _step_label(step: Mapping[str, Any], number: int) -> str:
    """The step's `id`, else the last part of its builder image (`docker`), else its number."""
    for key in ("id", "name"):
        value = step.get(key)
        if isinstance(value, str):
            if key == "name":
                value = value[-200:].rsplit("/", 1)[-1].split(":", 1)[0]
            label = _one_line(value, 80).strip()
            if label:
                return label
    return f"step {number}"


def _log_url(value: Any) -> str | None:
    # Only a plain https link goes into mrkdwn `<url|logs>`: nothing that could close it.
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= 2000 and _URL.fullmatch(value):
        return value
    raise BadEvent("logUrl is not a plain link")


_URL = re.compile(r"https?://[^\s<>|\x00-\x1f\x7f]+")
