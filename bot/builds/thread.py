"""One Slack thread per (image, SHA): what it shows, and how an event moves it forward.

Pure: no I/O. The state is the JSON kept in `slack_threads.state`::

    {"root": "relay" | "foreign" | null,   # whose message is the thread's root
     "build": {...},                       # the newest build of the commit, as last seen
     "progress": [rank, steps done, steps begun],
     "previous": build id | null,          # the build this one replaced (a retry)
     "tests": {build id: summary},         # test report summaries, newest last
     "failure_tests": build id | null,     # the failure reply already listed the tests
     "actions": {key: "pending" | "done" | "refused"}}

Pub/Sub redelivers and reorders, so an event is applied only when it moves the thread
forward: a newer build (later createTime), or the same build further along. Everything
else is a duplicate or stale and changes nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from bot.builds import messages
from bot.builds.events import FAILED, BuildEvent
from bot.domain.builds import success_action

ROOT_RELAY = "relay"
ROOT_FOREIGN = "foreign"
MAX_TESTS = 3
MAX_ACTIONS = 8
PENDING = "pending"

K = TypeVar("K", bound=Hashable)  # whose thread a message is for


@dataclass(frozen=True)
class Outgoing:
    """A Slack message the transition causes: the root, a root update, or a reply."""

    kind: str  # root | update | reply
    key: str  # unique for this thread: the outbox dedupe key is built from it
    text: str


@dataclass
class Transition:
    outcome: str  # applied | duplicate | stale
    state: dict[str, Any]
    messages: list[Outgoing] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.outcome == "applied"


@dataclass(frozen=True)
class Branches:
    staging: str
    production: str


def current_build(state: Mapping[str, Any], image: str, sha: str) -> BuildEvent | None:
    build = state.get("build")
    return BuildEvent.from_json(image, sha, build) if build else None


def tests_for(state: Mapping[str, Any], build_id: str) -> dict[str, Any] | None:
    return (state.get("tests") or {}).get(build_id)


def pending_actions(state: Mapping[str, Any]) -> list[str]:
    return [key for key, status in (state.get("actions") or {}).items() if status == PENDING]


def advance(state: Mapping[str, Any], event: BuildEvent, branches: Branches) -> Transition:
    """Apply EVENT to a thread whose root owner is already decided (`state["root"]`)."""
    current = current_build(state, event.image, event.sha)
    if current is not None:
        if event.build_id == current.build_id:
            progress = tuple(state.get("progress") or current.progress)
            if event.progress <= progress:
                return Transition("duplicate" if event.progress == progress else "stale", {})
            event = _fill_in(event, current)
        elif event.order < current.order:
            return Transition("stale", {})

    new: dict[str, Any] = dict(state)
    retry_of = None
    if current is not None and current.build_id != event.build_id:
        retry_of = current.build_id
        new["failure_tests"] = None
    elif current is not None:
        retry_of = state.get("previous")
    new["build"] = event.to_json()
    new["progress"] = list(event.progress)
    new["previous"] = retry_of

    out: list[Outgoing] = []
    was = current.status if current is not None and current.build_id == event.build_id else None
    if event.status == "WORKING" and was in (None, "PENDING", "QUEUED"):
        out.append(
            Outgoing("reply", f"{event.build_id}:started", messages.started(event, retry_of))
        )
    if event.terminal:
        tests = tests_for(new, event.build_id)
        if event.status == "SUCCESS":
            action = _success_action(event, branches)
            out.append(
                Outgoing(
                    "reply",
                    f"{event.build_id}:succeeded",
                    messages.succeeded(event, tests, action),
                )
            )
            if action:
                new["actions"] = _with_action(new, f"{action}:{event.build_id}")
        elif event.status in FAILED:
            effect = {
                "publish": "staging is unchanged",
                "promote": "nothing was promoted",
            }.get(_success_action(event, branches) or "")
            text = messages.failed(event, tests, effect=effect)
            out.append(Outgoing("reply", f"{event.build_id}:failed", text))
            new["failure_tests"] = event.build_id if tests else None
    root = _root_message(new, event, first=current is None)
    return Transition("applied", new, ([root] if root else []) + out)


def add_tests(
    state: Mapping[str, Any], image: str, sha: str, summary: dict[str, Any]
) -> Transition:
    """Keep a test report's summary; tell the thread when its build already failed."""
    build_id = summary.get("build_id") or ""
    tests = dict(state.get("tests") or {})
    if tests.get(build_id) == summary:
        return Transition("duplicate", {})
    tests.pop(build_id, None)
    tests[build_id] = summary
    new = dict(state)
    new["tests"] = dict(list(tests.items())[-MAX_TESTS:])
    out: list[Outgoing] = []
    current = current_build(new, image, sha)
    if current is not None and current.build_id == build_id:
        untold = new.get("failure_tests") != build_id
        if current.status in FAILED and untold and summary["failures"]:
            text = messages.test_failures(summary, standalone=True)
            out.append(Outgoing("reply", f"{build_id}:tests", text))
            new["failure_tests"] = build_id
        root = _root_message(new, current, first=False)
        if root is not None:
            out.insert(0, root)
    return Transition("applied", new, out)


def finish_action(state: Mapping[str, Any], key: str, outcome: str) -> dict[str, Any]:
    new = dict(state)
    new["actions"] = {**(state.get("actions") or {}), key: outcome}
    return new


def _fill_in(event: BuildEvent, current: BuildEvent) -> BuildEvent:
    """Fields a later event of the same build leaves out keep what an earlier one said."""
    return replace(
        event,
        branch=event.branch or current.branch,
        subject=event.subject or current.subject,
        created=event.created or current.created,
        started=event.started or current.started,
        log_url=event.log_url or current.log_url,
    )


def _success_action(event: BuildEvent, branches: Branches) -> str | None:
    return success_action(event.branch, branches.staging, branches.production)


def _with_action(state: Mapping[str, Any], key: str) -> dict[str, str]:
    actions = dict(state.get("actions") or {})
    actions.setdefault(key, PENDING)
    # Keep the record short: settled actions of old builds are history, not state.
    settled = [k for k, v in actions.items() if v != PENDING]
    for old in settled[: max(len(actions) - MAX_ACTIONS, 0)]:
        del actions[old]
    return actions


def _root_message(state: Mapping[str, Any], event: BuildEvent, *, first: bool) -> Outgoing | None:
    if state.get("root") != ROOT_RELAY:
        return None
    text = messages.root(event, tests_for(state, event.build_id), retry_of=state.get("previous"))
    if first:
        return Outgoing("root", "root", text)
    return Outgoing("update", f"update:{messages.digest(text)}", text)


def coalesce(outgoing: Sequence[tuple[K, Outgoing]]) -> list[tuple[K, Outgoing]]:
    """Messages of several events applied together, minus root updates that a later one
    in the same group replaces: only the newest text of each root is worth sending (a
    root queued in the group is posted with it)."""
    newest: dict[K, int] = {}
    for index, (key, message) in enumerate(outgoing):
        if message.kind in ("root", "update"):
            newest[key] = index
    kept: list[tuple[K, Outgoing]] = []
    for index, (key, message) in enumerate(outgoing):
        if message.kind == "update" and newest[key] != index:
            continue
        if message.kind == "root" and newest[key] != index:
            message = replace(message, text=outgoing[newest[key]][1].text)
        elif message.kind == "update" and any(k == key and m.kind == "root" for k, m in kept):
            continue  # the root queued above already carries this text
        kept.append((key, message))
    return kept
