"""What people do in Slack — a slash command, a button, a dialog — turned into service calls.

Slack and the console shell share this; each adapter only delivers the outcome (Bolt acks,
opens dialogs and posts to response_urls, the shell prints). Every command takes one of
three routes, chosen so that Slack's ack waits for as little as possible:

* inline — answered in the ack: `help`, and the small writes (approve, reject, freeze,
  unfreeze, queueing a build or an instance), which are recorded before Slack hears
  back, under the request's idempotency key;
* later — the ack is sent at once, the answer is computed right after it and posted to
  the response_url: reads (status, versions, history, instances, diff, dry runs) and
  the plans shown for confirmation. Nothing changes on this route, so a crash can only
  cost an answer, which the person asks for again;
* job — a durable job of kind "slack", for changes that may be slow (a confirmed
  promote or rollback moves registry tags on gcp; stopping an instance): it answers
  through the outbox, so the answer survives a crash and Slack's rate limits.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bot.domain.command_table import (
    Answered,
    Spec,
    from_fields,
    help_text,
    parse,
    reads_only,
    spec_of,
)
from bot.domain.commands import (
    Approve,
    Command,
    History,
    Instance,
    Instances,
    Promote,
    Reject,
    Rollback,
    Versions,
    is_dry_run,
    to_fields,
)
from bot.domain.errors import BadInput, NbenvError
from bot.domain.names import Env, Person, check_sha_ref, parse_env, short
from bot.domain.notifications import Act
from bot.domain.operations import Seen, pointers_text
from bot.domain.policy import Role
from bot.domain.text import escape
from bot.slack import views
from bot.slack.notifications import action_id, offer_buttons

if TYPE_CHECKING:
    from bot.service.nbenv import Nbenv
    from bot.service.replies import Reply
    from bot.store.uow import Store

log = logging.getLogger(__name__)

JOB_KIND = "slack"
# Said when the database cannot be reached: a fault that heals (a restart, a failover).
# Whether a write that was cut off committed is not known here, hence the pointer.
STORE_DOWN = (
    "nbenv cannot reach its database right now: try again in a minute "
    "(`/nbenv status` shows what is recorded)"
)


@dataclass(frozen=True)
class Later:
    """An answer to give right after the ack: a message already made, or the answer to
    COMMAND (its fields) as USER. Plain data, so another process can compute it."""

    user: str
    command: dict[str, Any] | None = None
    shown: dict[str, Any] | None = None  # the thread button's SHA, to refuse a stale press
    message: dict[str, Any] | None = None


@dataclass
class Outcome:
    """What an adapter must do after an interaction.

    answer: shown privately to the person now (the slash command's ack);
    later: a message to compute off the ack path, for the response_url (privately);
    replace: that message replaces the one whose button was pressed;
    dialog: a modal to open (needs the interaction's trigger_id);
    queued: something was queued (a job or a message): wake the background workers.
    """

    answer: dict[str, Any] | None = None
    later: Later | None = None
    replace: bool = False
    dialog: dict[str, Any] | None = None
    queued: bool = False


def render(reply: Reply, command: Command | None = None) -> dict[str, Any]:
    """A service reply as a Slack message."""
    if command is not None and command.json:
        data = json.dumps(reply.data, indent=1, default=str, ensure_ascii=False)
        return views.message(data, blocks=views.code_sections(escape(data)))
    return views.message(reply.text, offer_buttons(reply.offers) or None)


def _comes_later(spec: Spec[Any]) -> bool:
    """Only commands Slack never answers in the ack may come back in a button or a job."""
    return spec.answered is not Answered.AT_ONCE


def _value(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "")
    except (ValueError, TypeError, RecursionError):  # not JSON, not text, nested too deep
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("image"), str):
        raise BadInput("this button is malformed: nothing was changed")
    return value


class Interactions:
    def __init__(self, nbenv: Nbenv) -> None:
        self.nbenv = nbenv
        self.store: Store = nbenv.store

    # -- the slash command ------------------------------------------------------------------

    def slash(self, user: Person, text: str, *, key: str, response_url: str | None) -> Outcome:
        """`/nbenv TEXT` by USER. KEY identifies the request (Slack retries carry the same)."""
        try:
            command = parse(text)
            if command.name == "help":  # for anyone, even someone no team lists yet
                return Outcome(answer=_help_message())
            self.nbenv.check(user, command)
            way = spec_of(command).answered_for(command)
            if way is not Answered.AT_ONCE and not response_url:
                raise BadInput("this command answers later, and Slack sent no response_url")
            if way is Answered.LATER:
                hint = views.message(_working(command)) if spec_of(command).slow else None
                return Outcome(answer=hint, later=Later(user, to_fields(command)))
            if way is Answered.QUEUED:
                payload = {"mode": "run", "actor": user, "command": to_fields(command)}
                # A promote or rollback with --yes carries the environments as they are
                # now: when the job runs, it does this or nothing (see Seen).
                seen = command.image if spec_of(command).confirm else None
                self._queue(key, {**payload, "key": key, "reply_to": response_url}, seen)
                return Outcome(answer=views.message(_working(command)), queued=True)
            reply = self.nbenv.execute(user, command, key=key, reply_to=response_url)
        except NbenvError as error:
            return Outcome(answer=views.error(error.message))
        except Exception as error:
            if not _store_down(error):
                raise
            return Outcome(answer=views.error(STORE_DOWN))
        return Outcome(answer=render(reply, command), queued=not reads_only(command))

    def compute(self, later: Later) -> dict[str, Any]:
        """The message a Later stands for."""
        if later.message is not None:
            return later.message
        assert later.command is not None
        try:
            command = from_fields(later.command, allowed=_comes_later)
        except NbenvError as error:
            return views.error(error.message)
        return self._answer(later.user, command, later.shown)

    def _answer(
        self, user: str, command: Command, shown: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The later route: a read, or the plan of a promote / rollback to confirm."""
        try:
            if isinstance(command, Promote | Rollback) and not is_dry_run(command):
                return self._confirmation(user, command, shown)
            return render(self.nbenv.execute(user, command), command)
        except NbenvError as error:
            return views.error(error.message)
        except Exception as error:
            if not _store_down(error):
                raise
            return views.error(STORE_DOWN)

    # -- buttons ----------------------------------------------------------------------------

    def press(
        self, user: Person, pressed: str, raw_value: str | None, *, key: str, response_url: str
    ) -> Outcome:
        """A button pressed by USER; the answer goes privately to RESPONSE_URL."""
        try:
            return self._press(user, pressed, raw_value, key=key, response_url=response_url)
        except NbenvError as error:
            return Outcome(later=Later(user, message=views.error(error.message)))
        except Exception as error:
            if not _store_down(error):
                raise
            return Outcome(later=Later(user, message=views.error(STORE_DOWN)))

    def _press(
        self, user: Person, pressed: str, raw_value: str | None, *, key: str, response_url: str
    ) -> Outcome:
        value = _value(raw_value)
        image = value["image"]
        if pressed == action_id(Act.APPROVE):
            command: Command = Approve(image=image, sha=_sha(value))
            message = render(self.nbenv.execute(user, command, key=key))
            return Outcome(later=Later(user, message=message), queued=True)
        if pressed in (action_id(Act.PROMOTE), action_id(Act.ROLLBACK)):
            shape = Promote if pressed == action_id(Act.PROMOTE) else Rollback
            command = shape(image=image)
            self.nbenv.check(user, command)
            # The thread's button stands for one SHA: refuse it once that SHA has moved on.
            env = Env.STAGING if isinstance(command, Promote) else Env.PRODUCTION
            shown: dict[str, Any] = {"env": env.value}
            if value.get("sha"):
                shown["sha"] = _sha(value)
            return Outcome(later=Later(user, to_fields(command), shown))
        if pressed == views.CONFIRM:
            command = from_fields(value.get("cmd"), allowed=lambda spec: spec.confirm)
            expect = value.get("expect")
            if not isinstance(expect, dict) or not all(isinstance(v, int) for v in expect.values()):
                raise BadInput("this button is malformed: nothing was changed")
            self.nbenv.check(user, command)
            job = {
                "mode": "run",
                "actor": user,
                "command": to_fields(command),
                "expect": expect,
                "replace": True,
            }
            self._queue(key, {**job, "key": key, "reply_to": response_url})
            return Outcome(queued=True)
        if pressed == action_id(Act.REPLACE):  # for an instance running a revoked SHA
            env = value.get("env")
            env = parse_env(env if isinstance(env, str) else "")
            replacement = Instance(image=image, env=env)
            reply = self.nbenv.execute(user, replacement, key=key, reply_to=response_url)
            return Outcome(later=Later(user, message=render(reply)), queued=True)
        if pressed == action_id(Act.STOP):  # the old instance, stopped only by this press
            name = value.get("name")
            if not isinstance(name, str):
                raise BadInput("this button is malformed: nothing was changed")
            stop = Instances(image=image, stop=name)
            self.nbenv.check(user, stop)
            job = {"mode": "run", "actor": user, "command": to_fields(stop)}
            self._queue(key, {**job, "key": key, "reply_to": response_url})
            return Outcome(later=Later(user, message=views.message(_working(stop))), queued=True)
        if pressed == action_id(Act.MORE):  # the next page, in place of this one
            listing, cursor = value.get("listing"), value.get("cursor")
            if listing not in ("versions", "history") or not isinstance(cursor, str):
                raise BadInput("this button is malformed: nothing was changed")
            page = (
                Versions(image=image, before=cursor)
                if listing == "versions"
                else History(image=image, sha=_sha(value), before=cursor)
            )
            self.nbenv.check(user, page)
            return Outcome(later=Later(user, to_fields(page)), replace=True)
        if pressed == views.CANCEL:
            cancelled = views.message("Cancelled: nothing was changed.")
            return Outcome(later=Later(user, message=cancelled), replace=True)
        raise BadInput(f"unknown button {pressed!r}")

    def answer(
        self,
        key: str,
        response_url: str,
        message: dict[str, Any],
        *,
        replace: bool = False,
        user: str | None = None,
    ) -> None:
        """Queue a private answer to an interaction (delivered and retried by the outbox).

        USER: who asked, told directly should the response_url have expired."""
        with self.store.write(audited=False) as tx:
            tx.outbox.enqueue(
                f"answer:{key}",
                "response_url",
                {
                    "url": response_url,
                    "response_type": "ephemeral",
                    "replace_original": replace,
                    **message,
                    **({"user": user} if user else {}),
                },
            )

    # -- the reject dialog ------------------------------------------------------------------

    def reject_dialog(self, user: Person, raw_value: str | None, *, response_url: str) -> Outcome:
        """Reject pressed: the dialog asking why, or a private refusal (roles checked now)."""
        try:
            value = _value(raw_value)
            # The reason comes from the dialog: asked for only once the role allows it.
            command = Reject(image=value["image"], sha=_sha(value), reason="")
            self.nbenv.require(user, command, Role.TESTER)
        except NbenvError as error:
            return Outcome(later=Later(user, message=views.error(error.message)))
        metadata = {"image": command.image, "sha": command.sha, "response_url": response_url}
        return Outcome(dialog=views.reject_dialog(str(command.image), str(command.sha), metadata))

    def submit_reject(
        self, user: Person, raw_metadata: str | None, reason: str | None, *, key: str
    ) -> str | None:
        """The dialog submitted: None when the rejection is recorded, else what to fix."""
        if reason is not None and not isinstance(reason, str):
            return "This dialog is malformed: nothing was changed."
        reason = (reason or "").strip()
        if not reason:
            return "Say why: the testers and owners will read it."
        try:
            metadata = json.loads(raw_metadata or "")
            command = Reject(image=metadata["image"], sha=metadata["sha"], reason=reason)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return "This dialog is malformed: nothing was changed."
        except NbenvError as error:
            return error.message
        try:
            self.nbenv.execute(user, command, key=key)
        except NbenvError as error:
            return error.message
        return None

    # -- the App Home -----------------------------------------------------------------------

    def home(self, user: Person) -> dict[str, Any]:
        from bot.slack.home import home_view
        from bot.slack.outbox import delivery_pause, missing_channels

        images = self.nbenv.visible_images(user)
        with self.store.read() as tx:
            statuses = [self.nbenv.image_status(tx, image) for image in images]
        pause = delivery_pause(self.store)
        owner = any(self.nbenv.config.role_of(image, user) == Role.OWNER for image in images)
        paused = pause.reason if pause is not None and owner else None
        return home_view(user, statuses, missing=missing_channels(self.store), paused=paused)

    def bot_joined(self, channel: str) -> int:
        """Someone (the bot, when it is invited) joined CHANNEL: Slack sends this event only
        for channels the bot is in, so what it refused there for that reason goes out now."""
        from bot.slack.outbox import revive_missing_channel

        return revive_missing_channel(self.store, channel)

    # -- jobs -------------------------------------------------------------------------------

    def _queue(self, key: str, payload: dict[str, Any], seen_image: str | None = None) -> None:
        """Queue a job; SEEN_IMAGE: record that image's environments with it, as they are
        in the same transaction."""
        with self.store.write(audited=False) as tx:
            if seen_image is not None:
                seen = Seen.of(tx.pointers.state(seen_image), shown=False)
                payload = {**payload, "seen": {"generations": seen.generations, "shas": seen.shas}}
            tx.jobs.enqueue(f"slack:{key}", JOB_KIND, payload)

    def run(self, job: dict[str, Any]) -> None:
        """A job of kind "slack", run by the job worker; it answers through the outbox."""
        try:
            command = from_fields(job.get("command"), allowed=_comes_later)
            actor = str(job["actor"])
            if job.get("mode") == "confirm":
                message = self._answer(actor, command, job.get("shown"))
            else:
                reply = self.nbenv.execute(actor, command, key=job.get("key"), expect=_seen(job))
                message = render(reply, command)
        except NbenvError as error:
            message = views.error(error.message)
        self.answer(
            str(job["key"]),
            str(job["reply_to"]),
            message,
            replace=bool(job.get("replace")),
            user=str(job["actor"]),
        )

    def _confirmation(
        self, actor: str, command: Promote | Rollback, shown: dict[str, Any] | None
    ) -> dict[str, Any]:
        self.nbenv.require(actor, command, Role.OWNER)
        if shown and shown.get("sha"):
            # The thread's button stood for one SHA: refuse it once that SHA has moved on.
            with self.store.read() as tx:
                state = tx.pointers.state(command.image)
            current = state.sha(Env(shown["env"]))
            if current != shown["sha"]:
                raise BadInput(
                    f"this button is stale: `{short(shown['sha'])}` is no longer in "
                    f"{shown['env']} of {command.image} (it is `{short(current)}` now; "
                    f"{pointers_text(state.shas())}). Nothing was changed."
                )
        preview = self.nbenv.preview(actor, command)
        shas = [c["old"] for c in preview["changes"]] + [c["new"] for c in preview["changes"]]
        instances = self.nbenv.who_runs(command.image, shas)
        fields_ = to_fields(replace(command, confirmed=True))
        value = {"image": command.image, "cmd": fields_, "expect": preview["expect"]}
        if not views.value_fits(value):
            raise BadInput(
                "the reason is too long to carry in a Slack button: shorten it, or run the "
                "command with --yes to skip the confirmation"
            )
        return views.confirmation(preview, fields_, instances)


def _seen(job: dict[str, Any]) -> Seen | None:
    """What the owner saw when they decided: the confirmation's generations ("expect"),
    or the environments recorded when a --yes was queued ("seen")."""
    seen, expect = job.get("seen"), job.get("expect")
    if isinstance(seen, dict):
        generations, shas = seen.get("generations"), seen.get("shas")
        if not (_generations(generations) and isinstance(shas, dict)):
            raise BadInput("this job is malformed: nothing was changed")
        return Seen(generations, shas, shown=False)
    if expect is not None:
        if not _generations(expect):
            raise BadInput("this button is malformed: nothing was changed")
        return Seen(expect)
    return None


def _generations(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and type(v) is int for k, v in value.items()
    )


def _sha(value: dict[str, Any]) -> str | None:
    sha = value.get("sha")
    if sha is None:
        return None
    if not isinstance(sha, str):
        raise BadInput("this button is malformed: nothing was changed")
    return check_sha_ref(sha)


def _working(command: Command) -> str:
    image = f" {command.image}" if command.image else ""
    plan_first = isinstance(command, Promote | Rollback) and not command.confirmed
    if plan_first and not is_dry_run(command):
        return f"⏳ preparing the plan for {command.name}{image}: it appears here in a moment…"
    return f"⏳ working on `{command.name}{image}`: the answer appears here in a moment…"


def run_job(nbenv: Nbenv, job: dict[str, Any]) -> None:
    """The job handler for kind "slack" (wired in bot.bootstrap.job_handlers)."""
    Interactions(nbenv).run(job)


@functools.cache
def _help_message() -> dict[str, Any]:
    """The help, the same for everyone: built once (acks hand it on without changing it)."""
    return views.message(help_text())


def _store_down(error: BaseException) -> bool:
    """ERROR says the database cannot be reached now (and will be again)."""
    from bot.store.database import is_transient_fault  # loaded only once something failed

    if is_transient_fault(error):
        log.warning("the database cannot be reached: %s", str(error).splitlines()[0][:200])
        return True
    return False
