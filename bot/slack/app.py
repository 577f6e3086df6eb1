"""The Bolt app: `/nbenv`, the buttons, the reject dialog and the App Home.

`process_before_response=True`: Slack's HTTP request is answered when the listener
returns, so listeners do only what must be synchronous (parse; the few small writes
that must be recorded before Slack hears back) and leave the rest to a small thread
pool that runs right after the ack: answers posted to the response_url (in `nbenv
serve`, its worker's answer process computes and posts them), the reject dialog
(views.open with Slack's short-lived trigger), the App Home (views.publish).
Durable work goes to the job queue (see bot.slack.interactions).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, BoltRequest, BoltResponse
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient

from bot.domain.names import Person, user_id_problem
from bot.domain.notifications import Act
from bot.slack import views
from bot.slack.blocks import fit_message
from bot.slack.client import web_client
from bot.slack.interactions import Interactions, Later, Outcome
from bot.slack.notifications import action_id
from bot.slack.response_url import post_answer
from bot.slack.views import CANCEL, CONFIRM

if TYPE_CHECKING:
    from bot.service.nbenv import Nbenv

log = logging.getLogger(__name__)

SLASH = re.compile(r"^/nbenv[-_a-z0-9]*$")  # /nbenv, or /nbenv-dev for a second install
# Every button but Reject, which opens a dialog (its own listener).
PRESSES = re.compile(
    "^("
    + "|".join([*(action_id(act) for act in Act if act is not Act.REJECT), CONFIRM, CANCEL])
    + ")$"
)
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,20}$")
AFTER_ACK_THREADS = 4

# Takes an answer to compute and post after the ack: (response_url, what, replace?) →
# whether it took it.
Answers = Callable[[str, Later, bool], bool]


def build_app(
    service: Nbenv,
    *,
    token: str,
    signing_secret: str | None,
    wake: Callable[[], None] = lambda: None,
    client: WebClient | None = None,
    answers: Answers | None = None,
) -> App:
    """The Bolt app over SERVICE. WAKE is called when something was queued; ANSWERS
    takes the answers given after the ack (`nbenv serve`: its worker's answer process),
    and those it does not take are computed here, on the after-ack threads.

    SIGNING_SECRET None turns request verification off: only for Socket Mode, where
    requests arrive over the app's own authenticated connection.
    """
    interactions = Interactions(service)
    after_ack = ThreadPoolExecutor(AFTER_ACK_THREADS, thread_name_prefix="nbenv-after-ack")

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

    def after(work: Callable[[], None]) -> None:
        def run() -> None:
            try:
                work()
            except Exception:  # a thread pool would swallow it silently
                log.exception("work after the ack failed")

        after_ack.submit(run)

    def answer(response_url: str, later: Later, replace: bool) -> None:
        if answers is None or not answers(response_url, later, replace):
            after(lambda: post_answer(response_url, interactions.compute(later), replace=replace))

    def follow_up(outcome: Outcome, response_url: str) -> None:
        """What is left once Slack has its ack."""
        if outcome.queued:
            wake()
        if outcome.later is not None:
            answer(response_url, outcome.later, outcome.replace)

    app.use(OnlyPeople())

    @app.command(SLASH)
    def slash(ack: Ack, body: dict[str, Any]) -> None:
        response_url = body.get("response_url") or ""
        outcome = interactions.slash(
            Person(body["user_id"]),
            body.get("text") or "",
            key=f"slash:{body.get('trigger_id') or body.get('command_ts') or ''}",
            response_url=response_url,
        )
        if outcome.answer is None:
            ack()
        else:
            ack(response_type="ephemeral", **fit_message(outcome.answer))
        follow_up(outcome, response_url)

    @app.action(PRESSES)
    def press(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        response_url = body.get("response_url") or ""
        outcome = interactions.press(
            Person(body["user"]["id"]),
            action["action_id"],
            action.get("value"),
            key=_action_key(body, action),
            response_url=response_url,
        )
        follow_up(outcome, response_url)

    @app.action(action_id(Act.REJECT))
    def reject(ack: Ack, body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        ack()
        response_url = body.get("response_url") or ""

        def open_dialog() -> None:
            outcome = interactions.reject_dialog(
                Person(body["user"]["id"]), action.get("value"), response_url=response_url
            )
            if outcome.dialog is not None:
                client.views_open(trigger_id=body["trigger_id"], view=outcome.dialog)
            follow_up(outcome, response_url)

        after(open_dialog)

    @app.view(views.REJECT_CALLBACK)
    def submit_reject(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        values = (view.get("state") or {}).get("values") or {}
        reason = ((values.get(views.REASON_BLOCK) or {}).get(views.REASON_INPUT) or {}).get("value")
        problem = interactions.submit_reject(
            Person(body["user"]["id"]),
            view.get("private_metadata"),
            reason,
            key=f"view:{view.get('id')}:{body['user']['id']}",
        )
        if problem:
            ack(response_action="errors", errors={views.REASON_BLOCK: problem})
            return
        ack()
        wake()

    @app.event("app_home_opened")
    def home(ack: Ack, event: dict[str, Any], client: WebClient) -> None:
        ack()
        if event.get("tab", "home") != "home":
            return
        user = Person(event["user"])
        after(lambda: client.views_publish(user_id=user, view=interactions.home(user)))

    @app.event("member_joined_channel")
    def joined(ack: Ack, event: dict[str, Any]) -> None:
        ack()
        channel = event.get("channel")
        if not isinstance(channel, str) or not CHANNEL_ID.fullmatch(channel):
            log.warning("member_joined_channel without a channel ID: ignored")
            return

        def revive() -> None:
            if interactions.bot_joined(channel):
                wake()

        after(revive)

    return app


class OnlyPeople(Middleware):  # type: ignore[misc]
    """What a person does names them by their Slack user ID; a request naming anyone
    else (`build:…` is the pipeline's name) is malformed: 400 before any listener.

    A Middleware rather than a function given to `app.middleware`: Bolt then calls it
    directly, without inspecting its signature to inject arguments on every request."""

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse | None:
        acts, user = _acting_user(req.body)
        problem = user_id_problem(user) if acts else None
        if problem:
            return BoltResponse(status=400, body=f"nbenv: {problem}: nothing was changed")
        return next()


def _acting_user(body: dict[str, Any]) -> tuple[bool, Any]:
    """Whether BODY is something a person does here (a listener below answers it), and
    the user ID it names."""
    if "command" in body:  # a slash command: a form
        return True, body.get("user_id")
    if body.get("type") in ("block_actions", "view_submission"):
        user = body.get("user")
        return True, user.get("id") if isinstance(user, dict) else None
    event = body.get("event")
    if isinstance(event, dict) and event.get("type") == "app_home_opened":
        return True, event.get("user")
    return False, None


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
