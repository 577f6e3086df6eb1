"""The text of a build thread: the root (updated in place) and the replies.

Pure: no I/O. Every piece that comes from a commit, a build config or a notebook is
escaped, so a commit subject or an exception message cannot mention `@channel` or link,
and cut to a sensible length with a visible marker, so that a message stays readable and
within Slack's limits whatever a build says (the outbox cuts again to the hard limits).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from bot.builds.events import FAILED, BuildEvent, Step
from bot.domain.names import short
from bot.domain.text import cut, cut_mrkdwn, escape

EMOJI = {
    "PENDING": "⏸️",
    "QUEUED": "🕓",
    "WORKING": "⏳",
    "SUCCESS": "✅",
    "FAILURE": "❌",
    "INTERNAL_ERROR": "💥",
    "TIMEOUT": "⌛",
    "CANCELLED": "🚫",
    "EXPIRED": "⌛",
}
# What one thread message quotes at most, in characters (Slack shows 4,000 in one message).
MAX_MESSAGE = 3900
MAX_SUBJECT = 150
MAX_BRANCH = 100
MAX_DETAIL = 500
MAX_LINK = 1000  # a Cloud Build log link is ~150 characters: longer is not one to show
MAX_PATH = 200
STEP_MARK = {"SUCCESS": "✓", "WORKING": "…", None: "·", "QUEUED": "·", "PENDING": "·"}


def digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def build_ref(event: BuildEvent) -> str:
    return f"build `{event.build_id[:8]}`"


def root(event: BuildEvent, tests: dict[str, Any] | None, *, retry_of: str | None) -> str:
    head = f"{EMOJI[event.status]} *{event.image}* `{short(event.sha)}`"
    if event.subject:
        head += f" {escape(cut(event.subject, MAX_SUBJECT, '…'))}"
    facts = [f"*{event.status}*"]
    if event.branch:
        facts.append(f"branch `{_branch(event)}`")
    facts.append(build_ref(event) + (" (retry)" if retry_of else ""))
    position = _position(event)
    if position:
        facts.append(position)
    took = duration(event.started, event.finished)
    if took:
        facts.append(took)
    if event.log_url:
        facts.append(_log_link(event.log_url))
    lines = [head, " · ".join(facts)]
    if event.steps:
        lines.append(" · ".join(_step(step) for step in event.steps))
    if tests:
        lines.append(_tests_line(tests))
    return cut_mrkdwn("\n".join(lines), MAX_MESSAGE)


def started(event: BuildEvent, retry_of: str | None) -> str:
    again = f" again (replaces build `{retry_of[:8]}`)" if retry_of else ""
    branch = f" from `{_branch(event)}`" if event.branch else ""
    return cut_mrkdwn(f"▶️ {build_ref(event)}{branch} started{again}" + _logs(event), MAX_MESSAGE)


def succeeded(event: BuildEvent, tests: dict[str, Any] | None, action: str | None) -> str:
    text = f"✅ {build_ref(event)} succeeded"
    took = duration(event.started, event.finished)
    if took:
        text += f" in {took}"
    if tests:
        text += f": {_tests_line(tests)}"
    if action == "publish":
        text += "\nPublishing it to staging…"
    elif action == "promote":
        text += "\nA production-branch build: promoting it under the approval policy…"
    return cut_mrkdwn(text, MAX_MESSAGE)


def failed(event: BuildEvent, tests: dict[str, Any] | None, *, effect: str | None = None) -> str:
    """EFFECT: what did not happen because of it ("staging is unchanged")."""
    step = event.failing_step()
    where = f" at step `{escape(step.label)}`" if step else ""
    text = f"{EMOJI[event.status]} {build_ref(event)} {_failure_word(event.status)}{where}"
    took = duration(event.started, event.finished)
    if took:
        text += f" after {took}"
    if effect:
        text += f": {effect}"
    text += _logs(event)
    if tests and tests.get("failures"):
        # The notebooks say more than Cloud Build's "step exited with non-zero status".
        return cut_mrkdwn(text + "\n" + test_failures(tests), MAX_MESSAGE)
    if event.failure_detail:
        text += f"\n> {escape(cut(event.failure_detail, MAX_DETAIL))}"
    if tests:
        text += f"\n{_tests_line(tests)}"
    return cut_mrkdwn(text, MAX_MESSAGE)


def test_failures(summary: dict[str, Any], *, standalone: bool = False) -> str:
    """STANDALONE: a reply of its own (the report came after the failure), so it says
    which build it is about."""
    failed = summary["total"] - summary["passed"]
    build = summary.get("build_id")
    whose = f"build `{build[:8]}`: " if standalone and build else ""
    lines = [f"🧪 {whose}{failed} of {summary['total']} test notebooks failed:"]
    for failure in summary["failures"]:
        lines.append(_failure_line(failure))
        if failure.get("traceback"):
            # Triple backticks inside the traceback would end the code block early.
            body = escape(failure["traceback"]).replace("```", "'''")
            lines.append(f"```{body}```")
    if summary.get("more"):
        lines.append(f"…and {summary['more']} more")
    return cut_mrkdwn("\n".join(lines), MAX_MESSAGE)


def refused(action: str, event_build: str, sha: str, reason: str) -> str:
    what = "published to staging" if action == "publish" else "promoted to production"
    # REASON comes from the service, which escapes what users wrote.
    text = f"🚫 `{short(sha)}` was not {what} (build `{event_build[:8]}`): {reason}"
    return cut_mrkdwn(text, MAX_MESSAGE)


def not_staging(sha: str, staging: str | None, production_branch: str) -> str:
    if staging is None:
        return f"nothing is in staging, so `{short(sha)}` cannot be promoted"
    return (
        f"`{short(sha)}` is not what staging points to (`{short(staging)}`): only the "
        f"commit testers approved can be promoted. Fast-forward `{escape(production_branch)}` "
        "to it (git merge --ff-only) so the production branch builds that same SHA"
    )


# -- pieces ---------------------------------------------------------------------------------


def duration(start: str | None, end: str | None) -> str | None:
    if not start or not end:
        return None
    seconds = int((_moment(end) - _moment(start)).total_seconds())
    if seconds < 0:
        return None
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _position(event: BuildEvent) -> str | None:
    steps = event.steps
    if not steps:
        return None
    if event.status == "WORKING":
        index = next((i for i, step in enumerate(steps) if not step.done), len(steps) - 1)
        return f"step {index + 1}/{len(steps)} `{escape(steps[index].label)}`"
    if event.status in FAILED:
        step = event.failing_step()
        return f"failed at `{escape(step.label)}`" if step else None
    if event.status == "SUCCESS":
        return f"{len(steps)} steps"
    return None


def _step(step: Step) -> str:
    mark = STEP_MARK.get(step.status, "✗")
    took = duration(step.start, step.end)
    return f"{escape(step.label)} {mark}" + (f" {took}" if took else "")


def _tests_line(tests: dict[str, Any]) -> str:
    return f"tests: {tests['passed']}/{tests['total']} notebooks passed"


def _failure_word(status: str) -> str:
    return {
        "FAILURE": "failed",
        "INTERNAL_ERROR": "failed with an internal error",
        "TIMEOUT": "timed out",
        "CANCELLED": "was cancelled",
        "EXPIRED": "expired in the queue",
    }[status]


def _failure_line(failure: dict[str, Any]) -> str:
    # The runner's own wording (imported here: the relay's cold start does not need it).
    from bot.runner.notebook_tests import cell_position

    where = [f"`{escape(cut(str(failure['path']), MAX_PATH, '…'))}`"]
    position = cell_position(failure)  # `cell 4 (In [2]), line 3`, as the CLI says it
    if position:
        where.append(position)
    status = failure.get("status")
    if failure.get("ename"):
        error = failure["ename"]
        if failure.get("evalue"):
            error += f": {failure['evalue']}"
        what = "`" + escape(error).replace("`", "'") + "`"
    else:
        what = {"timeout": "timed out", "error": "could not run"}.get(status or "", "failed")
    if status == "timeout" and failure.get("ename"):
        what = "timed out: " + what
    return f"• {', '.join(where)}: {what}"


def _logs(event: BuildEvent) -> str:
    return f" · {_log_link(event.log_url)}" if event.log_url else ""


def _log_link(url: str) -> str:
    # A link cut short would lead nowhere: a huge one is named, not shown.
    return f"<{url}|logs>" if len(url) <= MAX_LINK else "logs (link too long to show)"


def _branch(event: BuildEvent) -> str:
    return escape(cut(event.branch or "", MAX_BRANCH, "…")).replace("`", "'")
