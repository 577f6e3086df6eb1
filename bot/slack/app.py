"""The Bolt app: `/nbenv`, the buttons, the reject dialog and the App Home.

`process_before_response=True`: Slack's HTTP request is answered when the listener
returns, so listeners do only what must be synchronous (parse, a few small SQL
statements) and queue the rest (see bot.slack.interactions). The Web API calls that
need Slack's short-lived trigger (opening a dialog) or that refresh a view run in Bolt's
lazy listeners, after the ack.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient

from bot.service.app import Nbenv
from bot.slack import views
from bot.slack.client import web_client
from bot.slack.interactions import Interactions

log = logging.getLogger(__name__)

SLASH = re.compile(r"^/nbenv[-_a-z0-9]*$")  # /nbenv, or /nbenv-dev for a second install
PRESSES = re.compile(r"^nbenv_(approve|promote|rollback|confirm|cancel)$")


def build_app(
    service: Nbenv,
    *,
    token: str,
    signing_secret: str | None,
    wake: Callable[[], None] = lambda: None,
    client: WebClient | None = None,
) -> App:
    """The Bolt app over SERVICE. WAKE is called when something was queued.

    SIGNING_SECRET None turns request verification off: only for Socket Mode, where
    requests arrive over the app's own authenticated connection.
    """
    interactions = Interactions(service)

    def authorize(enterprise_id: str | None, team_id: str | None, user_id: str | None):  # type: ignore[no-untyped-def]
        # One workspace, one bot token: no auth.test round trip on the first request.
        return AuthorizeResult(
            enterprise_id=enterprise_id, team_id=team_id, user_id=user_id, bot_token=token
        )

    # Bolt warns that SLACK_BOT_TOKEN is ignored in favour of CLIENT and AUTHORIZE, which is
    # what we want: quiet during construction only.
    bolt_log = logging.getLogger("bot.slack.bolt")
    level = bolt_log.level
    bolt_log.setLevel(logging.ERROR)
    try:
        app = _make_app(token, signing_secret, client, authorize, bolt_log)
    finally:
        bolt_log.setLevel(level)

    @app.command(SLASH)
    def slash(ack: Ack, body: dict[str, Any]) -> None:
        user = body.get("user_id", "")
        outcome = interactions.slash(
            user,
            body.get("text") or "",
            key=f"slash:{body.get('trigger_id') or body.get('command_ts') or ''}",
            response_url=body.get("response_url"),
        )
        assert outcome.answer is not None
        ack(response_type="ephemeral", **outcome.answer)
        if outcome.queued:
            wake()

    @app.action(PRESSES)
    def press(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        user = body["user"]["id"]
        outcome = interactions.press(
            user,
            action["action_id"],
            action.get("value"),
            key=_action_key(body, action),
            response_url=body.get("response_url") or "",
        )
        if outcome.queued:
            wake()

    def just_ack(ack: Ack) -> None:
        ack()

    def open_reject_dialog(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        user = body["user"]["id"]
        outcome = interactions.reject_dialog(
            user,
            action.get("value"),
            key=_action_key(body, action),
            response_url=body.get("response_url") or "",
        )
        if outcome.dialog is not None:
            client.views_open(trigger_id=body["trigger_id"], view=outcome.dialog)
        if outcome.queued:
            wake()

    app.action("nbenv_reject")(ack=just_ack, lazy=[open_reject_dialog])

    @app.view(views.REJECT_CALLBACK)
    def submit_reject(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        values = (view.get("state") or {}).get("values") or {}
        reason = ((values.get(views.REASON_BLOCK) or {}).get(views.REASON_INPUT) or {}).get("value")
        problem = interactions.submit_reject(
            body["user"]["id"],
            view.get("private_metadata"),
            reason,
            key=f"view:{view.get('id')}:{body['user']['id']}",
        )
        if problem:
            ack(response_action="errors", errors={views.REASON_BLOCK: problem})
            return
        ack()
        wake()

    def publish_home(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        if event.get("tab", "home") != "home":
            return
        user = event["user"]
        client.views_publish(user_id=user, view=interactions.home(user))

    app.event("app_home_opened")(ack=just_ack, lazy=[publish_home])
    return app


def _action_key(body: dict[str, Any], action: dict[str, Any]) -> str:
    """One key per press: Slack's retries of the same request carry the same action_ts."""
    return f"act:{body['user']['id']}:{action.get('action_ts') or body.get('trigger_id')}"


def _make_app(
    token: str,
    signing_secret: str | None,
    client: WebClient | None,
    authorize: Callable[..., AuthorizeResult],
    logger: logging.Logger,
) -> App:
    return App(
        name="nbenv",
        logger=logger,
        client=client or web_client(token),
        signing_secret=signing_secret or "",
        request_verification_enabled=signing_secret is not None,
        authorize=authorize,
        process_before_response=True,
        # Nothing here listens to messages: no need to look up the bot's own identity.
        ignoring_self_events_enabled=False,
        ignoring_self_assistant_message_events_enabled=False,
    )
