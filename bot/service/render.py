"""What the service says: plain Slack mrkdwn text and JSON-able data for each answer.

Slack adds blocks around these texts; the CLI turns the mrkdwn into plain text. User
supplied parts are escaped here, once, so no entry point can forget to.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from bot.domain import names
from bot.domain import operations as ops
from bot.domain.commands import Command, to_fields
from bot.domain.idle import idle_stop_text
from bot.domain.model import Version
from bot.domain.names import Env, short
from bot.domain.policy import PolicyCheck
from bot.domain.text import escape, mention


def command_details(command: Command) -> dict[str, Any]:
    """What COMMAND asked for beyond its name and image, as the audit log keeps it."""
    return {k: v for k, v in to_fields(command).items() if k not in ("name", "image")}


def policy_data(sha: str, check: PolicyCheck) -> dict[str, Any]:
    return {
        "sha": sha,
        "required": check.required,
        "approved_by": list(check.counted),
        "not_counted": list(check.not_counted),
        "rejected_by": [{"user": v.user, "reason": v.reason} for v in check.rejections],
        "met": check.met,
    }


def version_data(version: Version, envs: list[str], verdicts: list) -> dict[str, Any]:  # type: ignore[type-arg]
    notebooks = (version.report or {}).get("notebooks") or []
    return {
        "sha": version.sha,
        "short": short(version.sha),
        "created_at": version.created_at,
        "recorded_by": version.recorded_by,
        "subject": version.subject,
        "branch": version.branch,
        "tests_passed": version.tests_passed,
        "notebooks": {
            "passed": sum(1 for n in notebooks if n.get("status") == "passed"),
            "total": len(notebooks),
        },
        "environments": envs,
        "approvals": sum(1 for v in verdicts if v.approved),
        "rejections": [v.user for v in verdicts if not v.approved],
        "revoked": version.revoked,
        "revoked_reason": version.revoked_reason,
    }


def audit_data(entry: Any) -> dict[str, Any]:
    """An audit entry as `history` shows it to any user of the image. Entries written
    before instance links were kept out of the log still hold one: it is not shown."""
    details = entry.details
    if entry.action == "instance-ready" and "url" in details:
        details = {key: value for key, value in details.items() if key != "url"}
    return {
        "seq": entry.seq,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "image": entry.image,
        "sha": entry.sha,
        "outcome": entry.outcome,
        "details": details,
    }


# A user mention as the log keeps it: `@U02TESTER` (plain, what nbenv records of its own
# messages) or `<@U02TESTER>` (entries written before that, escaped on the way out).
_RECORDED_MENTION = re.compile(r"&lt;@([UW][A-Z0-9]+)&gt;|(?<![\w@])@([UW][A-Z0-9]+)\b")


def recorded_text(text: str) -> str:
    """Text from the log for Slack: escaped, with user mentions shown as mentions (the
    same way as the entry's actor) however they were recorded."""
    return _RECORDED_MENTION.sub(lambda m: mention(m.group(1) or m.group(2)), escape(text))


def _code_sha(value: Any) -> str:
    return f"`{short(value)}`" if isinstance(value, str) and value else "—"


def history_line(entry: dict[str, Any], about: str | None = None) -> str:
    """One entry of `history`; ABOUT: the SHA whose history this is, so an entry filed
    under another SHA says how it concerns ABOUT (the environments it moved it in or out of)."""
    details = entry["details"] if isinstance(entry["details"], dict) else {}
    sha = f" `{short(entry['sha'])}`" if entry["sha"] else ""
    revoked = f" revoked {_code_sha(details['revoked'])}" if details.get("revoked") else ""
    changes = details.get("changes") if isinstance(details.get("changes"), list) else []
    if about and entry["sha"] != about:
        moved = [
            f"{escape(str(c.get('env')))} {_code_sha(c.get('old'))} → {_code_sha(c.get('new'))}"
            for c in changes
            if isinstance(c, dict) and about in (c.get("old"), c.get("new"))
        ]
        revoked += f" ({', '.join(moved)})" if moved else ""
    outcome = ""
    if entry["outcome"] != "ok":
        command = details.get("command")
        dry_run = isinstance(command, dict) and command.get("dry_run")
        outcome = f" ({entry['outcome'].upper()}{', dry run' if dry_run else ''})"
    detail = details.get("reason") or details.get("error")
    detail_text = f": {recorded_text(str(detail))}" if detail else ""
    return (
        f"• {entry['at'][:19].replace('T', ' ')} {mention(entry['actor'])} "
        f"{entry['action']}{sha}{revoked}{outcome}{detail_text}"
    )


def status_text(data: dict[str, Any]) -> str:
    lines = [f"*{data['image']}*" + (" 🧊 frozen" if data["frozen"] else "")]
    for env, pointer in data["environments"].items():
        if pointer is None:
            lines.append(f"• {env}: —")
        else:
            revoked = " (revoked)" if pointer["revoked"] else ""
            since = str(pointer["updated_at"] or "")[:16].replace("T", " ")
            ago = f" ({pointer['age']})" if pointer.get("age") else ""
            lines.append(
                f"• {env}: `{pointer['short']}`{revoked} since {since} UTC{ago} "
                f"by {mention(pointer['updated_by'] or '?')}"
            )
    if data["freeze"]:
        lines.append(
            f"Frozen by {mention(data['freeze']['by'])}: {escape(data['freeze']['reason'])}"
        )
    if data.get("freeze_window"):
        lines.append(window_text(data["freeze_window"]))
    approvals = data["approvals"]
    if approvals:
        approved = len(approvals["approved_by"])
        lines.append(
            f"Staging approvals: {approved}/{approvals['required']}"
            + (
                "; rejected by " + ", ".join(mention(r["user"]) for r in approvals["rejected_by"])
                if approvals["rejected_by"]
                else ""
            )
        )
    return "\n".join(lines)


def window_text(window: dict[str, Any]) -> str:
    """The freeze window an image is in, or the next one."""
    if window["on"]:
        return f"⏸ In a freeze window: {escape(window['text'])}"
    return f"Next freeze window: {escape(window['text'])}"


def plan_text(plan: ops.Plan, preview: dict[str, Any], *, dry_run: bool) -> str:
    head = "Dry run — would " if dry_run else ""
    lines = [f"{head}{plan.action} {plan.image}: {plan.describe()}"]
    if "approvals" in preview:
        approvals = preview["approvals"]
        lines.append(
            f"Approvals: {len(approvals['approved_by'])}/{approvals['required']} "
            + " ".join(mention(u) for u in approvals["approved_by"])
        )
    if preview.get("freeze_window"):
        lines.append(window_text(preview["freeze_window"]))
    diff = preview.get("diff")
    if diff and diff.get("text"):
        lines.append(str(diff["text"]))
    if preview.get("vulnerabilities"):
        lines.append(str(preview["vulnerabilities"]["text"]))
    return "\n".join(lines)


def announcement(actor: str, plan: ops.Plan) -> str:
    image = plan.image
    who = mention(actor)
    if plan.action == "publish":
        if not plan.changes:
            return f"`{short(plan.sha)}` already is in staging for {image}"
        return f"🧪 `{short(plan.sha)}` is now in staging for {image} (published by {who})."
    if plan.action == "promote":
        lines = [f"🚀 {who} promoted `{short(plan.sha)}` to production of {image}"]
        fallback = plan.change(Env.FALLBACK)
        if fallback:
            lines.append(f"fallback: `{short(fallback.old)}` → `{short(fallback.new)}`")
        rejections = plan.details.get("overridden_rejections")
        if plan.details.get("forced") and rejections:
            lines.append(
                f"forced over the rejection(s) of "
                f"{', '.join(mention(u) for u in rejections)}: "
                f"{escape(plan.details.get('reason'))}"
            )
        overridden = plan.details.get("overridden_vulnerabilities")
        if overridden:
            named = ", ".join(escape(f["cve"]) for f in overridden[:3])
            count = plan.details.get("overridden_vulnerability_count") or len(overridden)
            lines.append(
                f"forced over {count} known vulnerabilities ({named}): "
                f"{escape(plan.details.get('reason'))}"
            )
        if plan.details.get("forced") and not rejections and not overridden:
            lines.append(f"forced: {escape(plan.details.get('reason'))}")
        return "\n".join(lines)
    production = plan.change(Env.PRODUCTION)
    assert production is not None
    reason = plan.details.get("reason")
    return (
        f"⏪ {who} rolled back production of {image}: `{short(production.old)}` → "
        f"`{short(production.new)}`"
        + (f" (revoked `{short(plan.revoke)}`)" if plan.revoke else "")
        + (f": {escape(reason)}" if reason else "")
    )


def instance_name(image: str, env: str, actor: str, sha: str) -> str:
    return names.instance_name(image, env, sha, salt=uuid.uuid4().hex[:4])


def instance_listing(row: dict[str, Any], viewer: str, *, revoked: bool) -> dict[str, Any]:
    """What VIEWER may know of an instance: everyone sees what it is and whose it is; only
    the person who asked for it gets its access link (on the local backend the link holds
    the server's token, so whoever has it can run code in that person's notebook). Image
    owners may stop an instance, but not open it: least privilege."""
    shown = {key: row[key] for key in ("name", "image", "env", "sha", "state", "requested_by")}
    shown["created_at"] = row.get("created_at")
    shown["revoked"] = revoked  # it runs a SHA that was rolled back
    details = row.get("details") or {}
    # Recorded since instances stop themselves when idle; None: never.
    idle = details.get("idle_timeout_s", False)
    if (idle is None or type(idle) is int) and row["state"] in ("starting", "running"):
        shown["idle_timeout_s"] = details["idle_timeout_s"]
        shown["idle_stop"] = idle_stop_text(details["idle_timeout_s"])
    if row["requested_by"] == viewer:
        shown["url"] = row.get("url")
    return shown


def instance_line(shown: dict[str, Any]) -> str:
    link = f" {shown['url']}" if shown.get("url") else ""
    revoked = " ⛔ runs a revoked SHA" if shown.get("revoked") else ""
    idle = f" ({shown['idle_stop']})" if shown.get("idle_stop") else ""
    return (
        f"• `{shown['name']}` {shown['image']} {shown['env']} `{short(shown['sha'])}`{revoked} "
        f"{shown['state']}{idle} by {mention(shown['requested_by'])}{link}"
    )
