"""Build events shaped like Google's Build resource, Pub/Sub envelopes, a relay on fake Slack."""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk import WebClient

from tests.conftest import IMAGE
from tests.support.slack_api import FakeSlackApi, Message

PROJECT = "nbenv-test"
CHANNEL = "C01NLP"
TOKEN = "xoxb-relay-test"
EPOCH = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# The step ids of config/cloudbuild/staging.yaml.
STAGING_STEPS = ("build", "push", "run-tests", "deliver-report", "tests")
_ids = itertools.count(1)


def new_build_id() -> str:
    return f"b{next(_ids):07d}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def _ts(seconds: float) -> str:
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_resource(
    build_id: str,
    sha: str,
    status: str,
    *,
    image: str | None = IMAGE,
    branch: str | None = "staging",
    created: float = 0,
    steps: list[tuple[str, str | None]] | None = None,
    failure: dict[str, str] | None = None,
    subject: str | None = None,
) -> dict[str, Any]:
    """A Build resource as Cloud Build publishes it on `cloud-builds` (v1 JSON, camelCase).

    CREATED: createTime, in seconds after a fixed epoch; steps start one minute apart.
    """
    substitutions: dict[str, str] = {
        "COMMIT_SHA": sha,
        "SHORT_SHA": sha[:7],
        "REVISION_ID": sha,
        "REPO_NAME": "notebook-images",
        "TRIGGER_NAME": "nbenv-staging",
    }
    if branch is not None:
        substitutions["BRANCH_NAME"] = branch
        substitutions["REF_NAME"] = branch
    if image is not None:
        substitutions["_IMAGE_NAME"] = image
        substitutions["_REGISTRY"] = f"us-central1-docker.pkg.dev/{PROJECT}/notebooks"
    if subject is not None:
        substitutions["_COMMIT_SUBJECT"] = subject
    build: dict[str, Any] = {
        "name": f"projects/{PROJECT}/locations/global/builds/{build_id}",
        "id": build_id,
        "projectId": PROJECT,
        "status": status,
        "source": {"repoSource": {"projectId": PROJECT, "repoName": "notebook-images"}},
        "createTime": _ts(created),
        "timeout": "3600s",
        "logsBucket": f"gs://{PROJECT}_cloudbuild/logs",
        "logUrl": (
            f"https://console.cloud.google.com/cloud-build/builds/{build_id}?project=123456789"
        ),
        "substitutions": substitutions,
        "tags": ["nbenv", image or "other"],
        "options": {"logging": "CLOUD_LOGGING_ONLY", "dynamicSubstitutions": True},
        "queueTtl": "3600s",
        "buildTriggerId": "0c1d2e3f-trigger",
        "sourceProvenance": {
            "resolvedRepoSource": {"projectId": PROJECT, "repoName": "x", "commitSha": sha}
        },
        "steps": [],
    }
    for index, (step_id, step_status) in enumerate(steps or []):
        step: dict[str, Any] = {
            "name": "gcr.io/cloud-builders/docker",
            "args": ["version"],
            "id": step_id,
            "waitFor": ["-"] if index == 0 else [],
        }
        if step_status is not None:
            step["status"] = step_status
        if step_status not in (None, "QUEUED", "PENDING"):
            step["timing"] = {"startTime": _ts(created + 10 + 60 * index)}
            step["pullTiming"] = {"startTime": _ts(created + 10 + 60 * index)}
            if step_status != "WORKING":
                step["timing"]["endTime"] = _ts(created + 65 + 60 * index)
        build["steps"].append(step)
    if status not in ("QUEUED", "PENDING"):
        build["startTime"] = _ts(created + 5)
    if status in ("SUCCESS", "FAILURE", "TIMEOUT", "CANCELLED", "INTERNAL_ERROR"):
        build["finishTime"] = _ts(created + 5 + 60 * len(steps or []) + 7)
        build["timing"] = {"BUILD": {"startTime": build["startTime"]}}
    if failure is not None:
        build["failureInfo"] = failure
    return build


def build_events(
    build_id: str,
    sha: str,
    *,
    outcome: str = "SUCCESS",
    fail_at: str = "tests",
    branch: str | None = "staging",
    created: float = 0,
    subject: str | None = None,
    image: str = IMAGE,
    steps: tuple[str, ...] = STAGING_STEPS,
) -> list[dict[str, Any]]:
    """The events of one build in the order Cloud Build publishes them."""
    names = list(steps)
    common = {"branch": branch, "created": created, "subject": subject, "image": image}
    events = [build_resource(build_id, sha, "QUEUED", **common)]
    for running in range(len(names)):
        if outcome != "SUCCESS" and names[running] == fail_at:
            break
        steps: list[tuple[str, str | None]] = [
            (name, "SUCCESS" if i < running else "WORKING" if i == running else None)
            for i, name in enumerate(names)
        ]
        events.append(build_resource(build_id, sha, "WORKING", steps=steps, **common))
    if outcome == "SUCCESS":
        final = [(name, "SUCCESS") for name in names]
        events.append(build_resource(build_id, sha, "SUCCESS", steps=final, **common))
    else:
        failed = names.index(fail_at)
        final = [
            (name, "SUCCESS" if i < failed else outcome if i == failed else None)
            for i, name in enumerate(names)
        ]
        detail = (
            f'Build step failure: build step {failed} "gcr.io/cloud-builders/docker" '
            "failed: step exited with non-zero status: 1"
        )
        events.append(
            build_resource(
                build_id,
                sha,
                outcome,
                steps=final,
                failure={"type": "USER_BUILD_STEP", "detail": detail},
                **common,
            )
        )
    return events


def attributes_of(build: dict[str, Any]) -> dict[str, str]:
    return {"buildId": build["id"], "status": build["status"]}


def report(*failures: tuple[str, int, int, str, str], passed: int = 2) -> dict[str, Any]:
    """A test report (DESIGN.md §5): PASSED passing notebooks and the FAILURES given as
    (notebook, cell, line, ename, evalue); each notebook starts with a markdown cell, so
    the failing cell is `In [cell - 1]` in Jupyter."""
    notebooks: list[dict[str, Any]] = [
        {
            "path": f"notebooks/{IMAGE}/tests/{i:02d}_ok.ipynb",
            "status": "passed",
            "duration_s": 1.5,
            "failure": None,
        }
        for i in range(1, passed + 1)
    ]
    for name, cell, line, ename, evalue in failures:
        notebooks.append(
            {
                "path": f"notebooks/{IMAGE}/tests/{name}",
                "status": "failed",
                "duration_s": 2.25,
                "failure": {
                    "cell": cell,
                    "execution_count": cell - 1,
                    "line": line,
                    "ename": ename,
                    "evalue": evalue,
                    "traceback": (
                        "\x1b[0;31m---------------------------------------------------------\x1b[0m\n"
                        f"\x1b[0;31m{ename}\x1b[0m  Traceback (most recent call last)\n"
                        f"Cell \x1b[0;32mIn[{cell - 1}], line {line}\x1b[0m\n"
                        f"----> {line} tokens['missing']\n"
                        f"\x1b[0;31m{ename}\x1b[0m: {evalue}"
                    ),
                },
            }
        )
    return {
        "python": "3.10.13",
        "packages": [
            {"name": "keras", "version": "2.15.0"},
            {"name": "numpy", "version": "1.26.4"},
        ],
        "notebooks": notebooks,
    }


# -- Pub/Sub envelopes ---------------------------------------------------------------------


def pubsub_message(payload: Any, attributes: dict[str, str], message_id: str) -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {
        "data": base64.b64encode(data).decode(),
        "attributes": attributes,
        "messageId": message_id,
        "publishTime": "2025-03-01T12:00:01.123Z",
    }


def event_data(payload: Any, attributes: dict[str, str], message_id: str = "1") -> dict[str, Any]:
    """The `data` of a messagePublished CloudEvent (also the body of a raw push)."""
    return {
        "message": pubsub_message(payload, attributes, message_id),
        "subscription": f"projects/{PROJECT}/subscriptions/nbenv-relay",
    }


# -- a relay on fake Slack -----------------------------------------------------------------


@pytest.fixture
def slack() -> Iterator[FakeSlackApi]:
    with FakeSlackApi(token=TOKEN) as api:
        yield api


@pytest.fixture
def relay(runtime: Any, slack: FakeSlackApi) -> Any:
    from bot.builds.relay import BuildRelay
    from bot.slack.outbox import OutboxSender

    sender = OutboxSender(runtime.store, WebClient(token=TOKEN, base_url=slack.base_url))
    return BuildRelay(runtime.nbenv, sender)


def roots(slack: FakeSlackApi, sha: str, image: str = IMAGE) -> list[Message]:
    """The thread roots posted for (IMAGE, SHA): messages that are not replies and name it."""
    return [
        m
        for m in slack.messages(CHANNEL).values()
        if not m.is_reply and re.search(rf"\*{re.escape(image)}\* `{sha[:7]}`", m.text)
    ]


def replies(slack: FakeSlackApi, root: Message) -> list[Message]:
    return [m for m in slack.thread(root.channel, root.ts) if m.ts != root.ts]
