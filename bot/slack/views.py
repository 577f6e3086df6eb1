"""Block Kit for what the Slack adapter shows: replies, confirmations, the reject dialog.

Texts that come from the service are mrkdwn it already escaped; anything a person typed
that is rendered here (a reason, a commit subject) goes through `escape` first, so it can
neither mention nor link.
"""

from __future__ import annotations

import json
import re
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.domain.names import short
from bot.domain.text import TRUNCATED, cut, escape, mention, safe_end
from bot.service.render import window_text

MAX_SECTION = 3000  # characters of one mrkdwn section (Slack's limit)
MAX_BLOCKS = 50  # blocks of one message (Slack's limit)
MAX_VALUE = ButtonElement.value_max_length  # 2000: characters of a button value
MAX_BUTTON_TEXT = ButtonElement.text_max_length  # 75
MAX_ACTION_ELEMENTS = 25
MAX_REASON = 1000  # a reason typed in the reject dialog
FALLBACK_TEXT = 300  # the notification text beside blocks

REJECT_CALLBACK = "nbenv_reject_dialog"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
CONFIRM = "nbenv_confirm"
CANCEL = "nbenv_cancel"

Blocks = list[dict[str, Any]]


def chunks(text: str, size: int = MAX_SECTION) -> list[str]:
    """TEXT cut at line ends into pieces Slack accepts in one section each; a line too
    long for one is cut at a space if there is one near the end, and never inside an
    entity (`&lt;`) or a `<…>` reference."""
    pieces: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > size:  # a single huge line: cut it where it must be cut
            if current:
                pieces.append(current)
                current = ""
            end = _split_point(line, size)
            pieces.append(line[:end])
            line = line[end:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > size:
            pieces.append(current)
            current = line
        else:
            current = candidate
    if current or not pieces:
        pieces.append(current)
    return pieces


def _split_point(line: str, size: int) -> int:
    end = safe_end(line, size)
    space = line.rfind(" ", max(0, end - 200), end)
    if space > 0:
        end = space + 1
    return end if end > 0 else size  # no safe point at all: cut where it must be cut


def section(text: str) -> dict[str, Any]:
    """A mrkdwn section, built and validated by slack_sdk's Block Kit model."""
    return SectionBlock(text=MarkdownTextObject(text=cut(text, MAX_SECTION) or " ")).to_dict()


def code_sections(text: str) -> Blocks:
    """TEXT (already escaped) as code blocks, one per section: each piece is a whole
    ``` … ``` block, so a long answer split over sections still reads as code."""
    body = text.replace("```", "'''")  # a fence inside would end the block early
    return [section(f"```{piece}```") for piece in chunks(body, MAX_SECTION - 6)]


def button(
    action_id: str, text: str, value: dict[str, Any] | str, style: str | None = None
) -> dict[str, Any]:
    """A button, built and validated by slack_sdk's Block Kit model."""
    return ButtonElement(
        action_id=action_id,
        text=PlainTextObject(text=text[:MAX_BUTTON_TEXT], emoji=True),
        value=value if isinstance(value, str) else json.dumps(value, separators=(",", ":")),
        style=style,
    ).to_dict()


def message_blocks(text: str, buttons: Blocks | None = None) -> Blocks:
    """TEXT as sections (cut at line ends, as many as fit), then the BUTTONS (elements)."""
    room = MAX_BLOCKS - (1 if buttons else 0)
    pieces = chunks(text)
    if len(pieces) > room:
        pieces = [*pieces[: room - 1], "_" + TRUNCATED + "_"]
    blocks = [section(piece) for piece in pieces]
    if buttons:
        blocks.append(ActionsBlock(elements=buttons[:MAX_ACTION_ELEMENTS]).to_dict())
    return blocks


def message(
    text: str, buttons: Blocks | None = None, *, blocks: Blocks | None = None
) -> dict[str, Any]:
    """A message (ephemeral answer or response_url post): text as sections (or BLOCKS),
    then buttons."""
    if blocks is None:
        return {"text": fallback(text), "blocks": message_blocks(text, buttons)}
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], section("_" + TRUNCATED + "_")]
    return {"text": fallback(text), "blocks": blocks}


def fallback(text: str) -> str:
    """The plain notification text Slack shows where blocks are not rendered."""
    first = text.strip().split("\n", 1)[0]
    return first if len(first) <= FALLBACK_TEXT else first[: FALLBACK_TEXT - 1] + "…"


_ANGLED = re.compile(r"<([^<>]*)>")
_SAFE_REFERENCE = re.compile(r"@[UW][A-Z0-9]+|#[CG][A-Z0-9]+")


def neutralize(text: str) -> str:
    """Keep user and channel references, turn any other <…> (a special mention like
    <!channel>, a link) into plain text. For messages that may quote what someone typed."""

    def keep_or_escape(match: re.Match[str]) -> str:
        inner = match.group(1)
        if _SAFE_REFERENCE.fullmatch(inner):
            return match.group(0)
        return f"&lt;{inner}&gt;"

    return _ANGLED.sub(keep_or_escape, text)


def error(message_text: str) -> dict[str, Any]:
    """A refusal or bad-input answer: one line, and it quotes input, so neutralized."""
    return message(f"⚠️ {neutralize(message_text)}")


# -- confirmation of promote / rollback --------------------------------------------------------


def confirmation(
    preview: dict[str, Any],
    command: dict[str, Any],
    instances: dict[str, list[str]],
) -> dict[str, Any]:
    """The plan of a promote or rollback, with a button that carries the generations it shows.

    COMMAND: the command's fields, sent back when the button is pressed; INSTANCES: the
    people running each SHA the plan touches (sha → user IDs, one per instance).
    """
    action = preview["action"]
    image = preview["image"]
    title = "Promote" if action == "promote" else "Roll back"
    lines = [f"*{title} {image}?* This is the plan:"]
    for change in _ordered(preview["changes"]):
        lines.append(f"• {change['env']}: `{short(change['old'])}` → `{short(change['new'])}`")
    if not preview["changes"]:
        lines.append("• no environment changes")
    if preview.get("revoke"):
        lines.append(
            f"• `{short(preview['revoke'])}` will be *revoked*: it needs fresh approvals "
            "before it can be promoted again"
        )
    details = preview.get("details") or {}
    in_window = details.get("overridden_window")
    rejections = details.get("overridden_rejections") or []
    if in_window:
        lines.append(f"• *forced* in the freeze window {escape(in_window)}")
    elif preview.get("freeze_window"):
        lines.append("• " + window_text(preview["freeze_window"]))
    if rejections:
        overridden = ", ".join(mention(u) for u in rejections)
        lines.append(f"• *forced* over the rejection of {overridden}")
    vulnerable = details.get("overridden_vulnerabilities") or []
    if vulnerable:
        named = ", ".join(escape(f["cve"]) for f in vulnerable[:3])
        count = details.get("overridden_vulnerability_count") or len(vulnerable)
        lines.append(f"• *forced* over {count} known vulnerabilities ({named})")
    if details.get("reason"):
        lines.append(f"• reason: {escape(details['reason'])}")
    approvals = preview.get("approvals")
    if approvals is not None:
        approved = " ".join(mention(u) for u in approvals["approved_by"]) or "none"
        lines.append(
            f"*Approvals:* {len(approvals['approved_by'])}/{approvals['required']} — {approved}"
        )
        if approvals.get("not_counted"):
            lines.append(
                "_not counted (own approval):_ "
                + " ".join(mention(u) for u in approvals["not_counted"])
            )
    diff = preview.get("diff")
    if action == "promote":
        if diff and diff.get("text"):
            lines.append("*Base image and packages:*\n" + str(diff["text"]))
        else:
            lines.append("_Base image and package diff: not available here._")
    vulnerabilities = preview.get("vulnerabilities")
    if vulnerabilities and vulnerabilities.get("text"):
        lines.append(str(vulnerabilities["text"]))
    lines.append(_instances_text(preview, instances))
    text = "\n".join(lines)
    value = {"image": image, "cmd": command, "expect": preview["expect"]}
    label = "Promote to production" if action == "promote" else "Roll back production"
    buttons = [
        button(CONFIRM, label, value, "primary" if action == "promote" else "danger"),
        button(CANCEL, "Cancel", {"image": image}),
    ]
    return message(text, buttons)


def _ordered(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Production first: it is what the plan is about."""
    rank = {"production": 0, "fallback": 1, "staging": 2}
    return sorted(changes, key=lambda change: rank.get(change["env"], 3))


def _instances_text(preview: dict[str, Any], instances: dict[str, list[str]]) -> str:
    roles: dict[str, list[str]] = {}
    changes = _ordered(preview["changes"])
    for change in changes:
        if change["old"]:
            roles.setdefault(change["old"], []).append(f"{change['env']} now")
    for change in changes:
        roles.setdefault(change["new"], []).append(f"{change['env']} next")
    lines = []
    for sha, where in roles.items():
        users = instances.get(sha) or []
        if not users:
            continue
        counted: dict[str, int] = {}
        for user in users:
            counted[user] = counted.get(user, 0) + 1
        people = ", ".join(
            mention(user) + (f" ×{count}" if count > 1 else "") for user, count in counted.items()
        )
        lines.append(f"• `{short(sha)}` ({', '.join(where)}): {people}")
    if not lines:
        return "*Running instances:* none of these versions"
    return "*Running instances:*\n" + "\n".join(lines)


def value_fits(value: dict[str, Any]) -> bool:
    return len(json.dumps(value, separators=(",", ":"))) <= MAX_VALUE


# -- the reject dialog -----------------------------------------------------------------------


def reject_dialog(image: str, sha: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": REJECT_CALLBACK,
        "private_metadata": json.dumps(metadata, separators=(",", ":")),
        "title": {"type": "plain_text", "text": "Reject a version"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            section(
                f"Reject `{short(sha)}` of *{image}*? Promotion stays blocked until you "
                "approve it or an owner overrides with a reason."
            ),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Why? (the team sees this)"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": MAX_REASON,
                },
            },
        ],
    }
