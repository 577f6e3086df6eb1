"""The Slack app asks for exactly the scopes its code uses: each Web API method nbenv calls
and each event it subscribes to, mapped to the bot scopes Slack's reference says it needs.

A scope too many is a permission an admin is asked to grant for nothing (and may refuse
the install over); a scope too few is `missing_scope` at the first call. The table is
Slack's, page by page (docs.slack.dev/reference/methods/<method>, .../events/<event>):
a new method in the code fails this test until its row is added from its page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml
from slack_sdk import WebClient

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "config" / "slack-manifest.yaml"

# Web API method → the bot scopes it needs, from its "Required scopes" on
# docs.slack.dev/reference/methods/<method>.
METHOD_SCOPES: dict[str, set[str]] = {
    # chat:write. Not chat:write.public (docs.slack.dev/reference/scopes/chat.write.public,
    # posting where the bot has not joined): nbenv posts only where it is a member, so that
    # it can read back (conversations.history) what it posted before a crash.
    "chat.postMessage": {"chat:write"},
    "chat.update": {"chat:write"},
    # channels:history, groups:history, im:history, mpim:history: one per kind of
    # conversation read; nbenv reads image channels (public or private), never DMs.
    # include_all_metadata needs no scope of its own: metadata.message:read is for
    # message_metadata_* events (docs.slack.dev/reference/scopes/metadata.message.read).
    "conversations.history": {"channels:history", "groups:history"},
    "conversations.replies": {"channels:history", "groups:history"},
    "views.open": set(),  # "No scope required"
    "views.publish": set(),  # "No scope required"
    "auth.test": set(),  # Bolt's token check at start: "No scope required"
}
# Event → bot scopes (docs.slack.dev/reference/events/<event>).
EVENT_SCOPES: dict[str, set[str]] = {
    "app_home_opened": set(),
    # "if your bot has the channels:read scope, it will receive events for public
    # channels. If it has groups:read, it will receive events for private channels."
    "member_joined_channel": {"channels:read", "groups:read"},
}
SLASH_COMMAND_SCOPE = "commands"

_METHOD_LITERAL = re.compile(
    r"^(?:chat|conversations|views|users|auth|reactions|files)\.[A-Za-z]+$"
)


def methods_called() -> set[str]:
    """Every Slack Web API method the bot's and the relay's code names: a WebClient
    method call (`client.views_open(...)`) or a method name as a string
    (`api_call("chat.postMessage", ...)`, an outbox row's method)."""
    found: set[str] = set()
    sources = [*(ROOT / "bot").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Attribute) and "_" in node.attr:
                family = node.attr.split("_", 1)[0]
                if family in {"chat", "conversations", "views", "users", "auth"} and callable(
                    getattr(WebClient, node.attr, None)
                ):
                    found.add(node.attr.replace("_", ".", 1))
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _METHOD_LITERAL.match(node.value)
            ):
                found.add(node.value)
    return found | {"auth.test"}  # Bolt calls it with our token at start


def test_the_manifest_asks_for_exactly_the_scopes_the_code_uses() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text("utf-8"))
    called = methods_called()
    unknown = called - METHOD_SCOPES.keys()
    assert not unknown, f"look up the scopes of {sorted(unknown)} in Slack's reference"
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    needed = {SLASH_COMMAND_SCOPE} if manifest["features"]["slash_commands"] else set()
    for method in called:
        needed |= METHOD_SCOPES[method]
    for event in events:
        needed |= EVENT_SCOPES[event]

    requested = manifest["oauth_config"]["scopes"]["bot"]
    assert len(requested) == len(set(requested))
    assert set(requested) == needed
    assert "users:read" not in requested and "metadata.message:read" not in requested
    assert {"chat.postMessage", "chat.update", "conversations.history", "views.publish"} <= called


def test_every_scope_says_why_it_is_asked_for() -> None:
    lines = MANIFEST.read_text("utf-8").splitlines()
    start = lines.index("    bot:")
    for line in lines[start + 1 :]:
        if not line.startswith("      - "):
            break
        scope, _, reason = line.strip()[2:].partition("#")
        assert reason.strip(), f"the scope {scope.strip()} has no reason in a comment"
