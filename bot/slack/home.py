"""The App Home tab: a dashboard of every image the person may see.

Per image: its three environments (short SHA, age, who moved it last), what waits for
approval in staging, a freeze if there is one, and a warning when the bot is missing from
the image's channel (messages wait for it there). Built from `Nbenv.image_status`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.domain.names import Env
from bot.domain.text import age, cut, escape, mention, quote
from bot.domain.vulnerabilities import counts_text
from bot.service.render import window_text
from bot.slack.blocks import MAX_HOME_BLOCKS, MAX_TEXT_OBJECT, fit_blocks

BLOCKS_PER_IMAGE = 4
MAX_QUOTED = 300  # characters of a reason quoted on the Home tab, before escaping


def home_view(
    user: str,
    statuses: list[dict[str, Any]],
    now: datetime | None = None,
    *,
    missing: dict[str, int] | None = None,
    paused: str | None = None,
) -> dict:  # type: ignore[type-arg]
    """MISSING: channels the bot is not in, by how many messages Slack refused there.
    PAUSED: why Slack refuses every message (see bot.slack.outbox.APP_WIDE_ERRORS)."""
    now = now or datetime.now(UTC)
    missing = missing or {}
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "nbenv — notebook images"}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"As of {now:%Y-%m-%d %H:%M} UTC · `/nbenv help` lists the commands",
                }
            ],
        },
    ]
    if not statuses:
        blocks.append(
            _text(
                f"{mention(user)}, you are not in any nbenv team yet: ask an "
                "image owner to add your Slack ID to the nbenv config."
            )
        )
    if paused:
        blocks.append(
            _text(
                f"⚠️ Slack refuses nbenv's messages (`{escape(paused)}`): they wait, none is "
                "lost. Fix the app's token or scopes (reinstall the app): they go out within "
                "a minute."
            )
        )
    warning = _missing_warning(statuses, missing)
    if warning:
        blocks.append(_text(warning))
    active = [s for s in statuses if s["frozen"] or any(s["environments"].values())]
    idle = [s["image"] for s in statuses if s not in active]
    # Every block counts against Slack's 100: the header, the idle line (a divider and a
    # context) and, when not every image fits, the "…and N more" line too.
    after = 2 if idle else 0
    room = (MAX_HOME_BLOCKS - len(blocks) - after) // BLOCKS_PER_IMAGE
    if len(active) > room:
        room = (MAX_HOME_BLOCKS - len(blocks) - after - 1) // BLOCKS_PER_IMAGE
    for status in active[:room]:
        blocks += _image_blocks(status, now)
    if len(active) > room:
        blocks.append(_text(f"…and {len(active) - room} more: `/nbenv status` lists them all."))
    if idle:
        blocks += [
            {"type": "divider"},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _idle_line(idle)}]},
        ]
    return {"type": "home", "blocks": fit_blocks(blocks, MAX_HOME_BLOCKS)}


def _idle_line(idle: list[str]) -> str:
    """The images with no version yet, as many names as fit, then how many more."""
    line = "No versions yet: "
    for index, image in enumerate(idle):
        more = f" …and {len(idle) - index} more"
        name = image if index == 0 else ", " + image
        if len(line) + len(name) + len(more) > MAX_TEXT_OBJECT and index:
            return line + more
        line += name
    return line


def _missing_warning(statuses: list[dict[str, Any]], missing: dict[str, int]) -> str | None:
    """What the people of an image must do when the bot is not in its channel."""
    channels = sorted({s["channel"] for s in statuses if missing.get(s["channel"])})
    if not channels:
        return None
    where = ", ".join(
        f"{_channel(c)} ({missing[c]} message{'s' if missing[c] != 1 else ''})"
        for c in channels[:20]
    )
    return (
        f"⚠️ *nbenv is not in {where}*: build threads and Approve/Reject buttons could not "
        "be posted there. Invite it (`/invite @nbenv` in the channel): what waits is sent "
        "as soon as it joins."
    )


def _text(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, MAX_TEXT_OBJECT)}}


def _channel(channel: str) -> str:
    return f"<#{channel}>" if channel[:1] in ("C", "G") and channel.isalnum() else escape(channel)


def _image_blocks(status: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    image = status["image"]
    title = f"*{image}* · team {escape(status['team'])} · {_channel(status['channel'])}"
    if status["frozen"]:
        title += " · 🧊 *frozen*"
    fields = [_env_field(env.value, status["environments"].get(env.value), now) for env in Env]
    notes = []
    freeze = status.get("freeze")
    if freeze:
        notes.append(
            f"🧊 Frozen by {mention(freeze['by'])} {age(freeze['at'], now)}: "
            f"{quote(freeze['reason'], MAX_QUOTED)}"
        )
    if status.get("freeze_window"):
        notes.append(window_text(status["freeze_window"]))
    notes.append(_pending(status))
    return [
        {"type": "divider"},
        _text(title),
        {"type": "section", "fields": fields},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": cut("\n".join(notes), MAX_TEXT_OBJECT)}],
        },
    ]


def _env_field(env: str, pointer: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    if pointer is None:
        return {"type": "mrkdwn", "text": f"*{env}*\n—"}
    revoked = " ⛔ revoked" if pointer.get("revoked") else ""
    who = mention(pointer["updated_by"]) if pointer.get("updated_by") else "?"
    moved = age(pointer.get("updated_at"), now)
    subject = pointer.get("subject")
    text = f"*{env}*\n`{pointer['short']}`{revoked}\n{moved} by {who}"
    if pointer.get("vulnerabilities") is not None:
        text += f"\nvulns: {counts_text(pointer['vulnerabilities'])}"
    if subject:
        text += f"\n_{escape(subject[:80])}_"
    return {"type": "mrkdwn", "text": text}


def _pending(status: dict[str, Any]) -> str:
    approvals = status.get("approvals")
    staging = status["environments"].get("staging")
    production = status["environments"].get("production")
    if not approvals or not staging:
        return "Nothing waits in staging."
    if production and production["sha"] == staging["sha"]:
        return f"Staging `{staging['short']}` is in production: nothing waits for approval."
    approved = len(approvals["approved_by"])
    line = f"Staging `{staging['short']}`: {approved}/{approvals['required']} approvals"
    if approvals["approved_by"]:
        line += " (" + ", ".join(mention(u) for u in approvals["approved_by"]) + ")"
    if approvals["rejected_by"]:
        line += "; ⛔ rejected by " + ", ".join(
            mention(r["user"]) + (f" ({quote(r['reason'], MAX_QUOTED)})" if r.get("reason") else "")
            for r in approvals["rejected_by"]
        )
    elif approvals["met"]:
        line += " — ready to promote"
    else:
        line += " — waiting for testers"
    return line
