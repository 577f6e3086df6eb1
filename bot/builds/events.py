"""Cloud Build events: the Pub/Sub envelope and the Build resource, parsed and checked.

Pure: no I/O. Anything malformed raises `BadEvent` with a one-line reason, so the relay
can log it and acknowledge the message (a retry would fail the same way).
"""

from __future__ import annotations

import base64
import binascii
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
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BadEvent("event data is not JSON") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise BadEvent("event data has no Pub/Sub message")
    message = data["message"]
    raw = message.get("data")
    if not isinstance(raw, str) or not raw:
        raise BadEvent("Pub/Sub message has no data")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadEvent("Pub/Sub message data is not base64") from None
    try:
        payload = json.loads(decoded)
    except (ValueError, UnicodeDecodeError):
        raise BadEvent("Pub/Sub message data is not JSON") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise BadEvent("Pub/Sub message attributes are not a mapping")
    message_id = message.get("messageId") or message.get("message_id")
    return PubsubMessage(
        payload,
        {str(k): str(v) for k, v in attributes.items()},
        str(message_id) if message_id else None,
    )


# -- the Build resource ---------------------------------------------------------------------


def parse_build(build: Any, attributes: Mapping[str, str] | None = None) -> BuildEvent:
    """A Build resource (as Cloud Build publishes it) → BuildEvent.

    Raises NotOurs for builds without `_IMAGE_NAME`, BadEvent for anything malformed.
    """
    attributes = attributes or {}
    if not isinstance(build, Mapping):
        raise BadEvent("the build is not a JSON object")
    build_id = build.get("id") or attributes.get("buildId")
    if not isinstance(build_id, str) or not BUILD_ID.fullmatch(build_id):
        raise BadEvent(f"build id {build_id!r} is missing or malformed")
    status = build.get("status") or attributes.get("status")
    if status not in RANKS:
        raise BadEvent(f"build {build_id}: unknown status {status!r}")
    substitutions = build.get("substitutions") or {}
    if not isinstance(substitutions, Mapping):
        raise BadEvent(f"build {build_id}: substitutions is not a mapping")
    image = substitutions.get("_IMAGE_NAME")
    if not image:
        raise NotOurs(f"build {build_id} has no _IMAGE_NAME substitution")
    if not isinstance(image, str) or image_name_problem(image):
        raise BadEvent(f"build {build_id}: _IMAGE_NAME {image!r} is not an image name")
    sha = substitutions.get("COMMIT_SHA") or _provenance_sha(build)
    if not isinstance(sha, str) or not is_full_sha(sha.lower()):
        raise BadEvent(f"build {build_id}: COMMIT_SHA {sha!r} is missing or not a full SHA")
    return BuildEvent(
        build_id=build_id,
        status=status,
        image=image,
        sha=sha.lower(),
        branch=_text(substitutions.get("BRANCH_NAME")),
        subject=_text(substitutions.get("_COMMIT_SUBJECT")),
        created=_time(build, "createTime") or "",
        started=_time(build, "startTime"),
        finished=_time(build, "finishTime"),
        steps=_steps(build_id, build.get("steps")),
        log_url=_log_url(build.get("logUrl")),
        failure_type=_text((build.get("failureInfo") or {}).get("type")),
        failure_detail=_text((build.get("failureInfo") or {}).get("detail")),
    )


def _provenance_sha(build: Mapping[str, Any]) -> Any:
    provenance = build.get("sourceProvenance") or {}
    resolved = provenance.get("resolvedRepoSource") if isinstance(provenance, Mapping) else None
    return resolved.get("commitSha") if isinstance(resolved, Mapping) else None


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadEvent(f"expected text, got {type(value).__name__}")
    return value[:MAX_TEXT]


def parse_time(value: Any) -> str | None:
    """An RFC 3339 timestamp → fixed-width UTC text that sorts in time order."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadEvent(f"{value!r} is not a timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadEvent(f"{value!r} is not a timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(build: Mapping[str, Any], key: str) -> str | None:
    try:
        return parse_time(build.get(key))
    except BadEvent as error:
        raise BadEvent(f"build {build.get('id')}: {key}: {error.message}") from None


def _steps(build_id: str, steps: Any) -> tuple[Step, ...]:
    if steps is None:
        return ()
    if not isinstance(steps, list):
        raise BadEvent(f"build {build_id}: steps is not a list")
    parsed = []
    for index, step in enumerate(steps, start=1):
        if not isinstance(step, Mapping):
            raise BadEvent(f"build {build_id}: step {index} is not an object")
        status = step.get("status")
        if status in (None, "", "STATUS_UNKNOWN"):
            status = None
        elif status not in RANKS:
            raise BadEvent(f"build {build_id}: step {index} has unknown status {status!r}")
        timing = step.get("timing") or {}
        if not isinstance(timing, Mapping):
            raise BadEvent(f"build {build_id}: step {index} timing is not an object")
        try:
            start, end = parse_time(timing.get("startTime")), parse_time(timing.get("endTime"))
        except BadEvent as error:
            raise BadEvent(f"build {build_id}: step {index}: {error.message}") from None
        parsed.append(Step(_step_label(step, index), status, start, end))
    return tuple(parsed)


def _step_label(step: Mapping[str, Any], index: int) -> str:
    """The step's `id`, else the last part of its builder image (`docker`), else its number."""
    label = step.get("id") or str(step.get("name") or "").rsplit("/", 1)[-1].split(":", 1)[0]
    return str(label)[:80] if label else f"step {index}"


def _log_url(value: Any) -> str | None:
    # Only a plain https link goes into mrkdwn `<url|logs>`: nothing that could close it.
    if isinstance(value, str) and re.fullmatch(r"https?://[^\s<>|]+", value):
        return value
    return None
