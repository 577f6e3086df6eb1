"""Slack misbehaves while a lifecycle runs, and nothing is lost, doubled or reordered.

Two images, in two channels, each go: a staging build (its thread root, step replies and
root updates) → a tester approves → the owner promotes through the plan and confirms →
a second build → approve → promote `--yes` → roll back through the plan → freeze and
unfreeze. The same seeded script runs twice, through the real service, relay, job worker,
answer route and outbox sender: once against a well-behaved fake Slack, once against one
that, in windows across the script, answers HTTP 429 with Retry-After, HTTP 500, read
time-outs and dropped connections after storing the message, `fatal_error`, `ratelimited`,
`not_in_channel` until the bot joins the channel (`member_joined_channel`), and an
expired and a used-up response_url for the answers of confirmed changes.

Afterwards every thread holds the same messages in the same order as in the calm run, each
posted once (by the outbox key in its metadata), none left undelivered, every person who
asked for a change got its answer (at the response_url, or as a DM when it was gone), and
the store's approvals, pointers and audit log are those of the calm run, the chain intact.
The sender runs on a clock the test moves: Retry-After and backoffs pass without sleeping.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.webhook import WebhookClient
from sqlalchemy import select

from bot.builds.relay import BuildRelay
from bot.domain.names import Person
from bot.slack.interactions import Interactions
from bot.slack.response_url import post_answer
from bot.store import tables as t
from tests.builds.conftest import attributes_of, build_events, report
from tests.conftest import IMAGE, OWNER, TESTER, VISION_OWNER, sha_of
from tests.slack.bot import blocks_text, buttons, response_payloads
from tests.support.outbox_world import OutboxWorld
from tests.support.slack_api import FakeSlackApi, Message

SEED = 14
VISION = "vision.pytorch-gpu"
VISION_TESTER = "U05VTESTER"
CHANNELS = {IMAGE: "C01NLP", VISION: "C02VISION"}
OWNERS = {IMAGE: OWNER, VISION: VISION_OWNER}
TESTERS = {IMAGE: TESTER, VISION: VISION_TESTER}
PASSES = 60  # delivery passes, 30 s apart on the sender's clock, for the outbox to settle


@dataclass
class Change:
    """A change someone asked for, answered later by the job worker through the outbox."""

    user: str
    url: str
    answer: str  # what the answer must say
    gone: bool = False  # the response_url is gone (expired, used up) when the answer comes


@dataclass
class Script:
    """The lifecycle, run against SLACK; FAULTS: Slack misbehaves in windows across it."""

    runtime: Any
    slack: FakeSlackApi
    faults: bool
    changes: list[Change] = field(default_factory=list)
    midway: Callable[[], None] = lambda: None  # what happens halfway through a build
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))

    def __post_init__(self) -> None:
        self.world = OutboxWorld(self.runtime, self.slack, pace=None)
        self.relay = BuildRelay(self.runtime.nbenv, None)
        self.interactions = Interactions(self.runtime.nbenv)

    # -- the script ------------------------------------------------------------------------

    def steps(self, image: str) -> Iterator[Callable[[], None]]:
        v1, v2 = sha_of(f"{image}:v1"), sha_of(f"{image}:v2")
        yield lambda: self.build(image, v1, created=0)
        yield lambda: self.approve(image, v1)
        yield lambda: self.promote_confirmed(image)
        yield lambda: self.build(image, v2, created=600)
        yield lambda: self.approve(image, v2)
        yield lambda: self.promote_yes(image)
        yield lambda: self.rollback_confirmed(image)
        yield lambda: self.freeze_and_unfreeze(image)

    def run(self) -> None:
        """Both images' steps, interleaved in a seeded order; faults start and end between
        steps (the Nth step of the run)."""
        chains = {image: self.steps(image) for image in CHANNELS}
        pending = {image: next(chain) for image, chain in chains.items()}
        number, done = 0, Counter[str]()
        while pending:
            image = self.rng.choice(sorted(pending))
            if self.faults:
                self.misbehave(number, image, done[image])
            pending[image]()
            number, done[image] = number + 1, done[image] + 1
            following = next(chains[image], None)
            if following is None:
                del pending[image]
            else:
                pending[image] = following
        # What the sender does every REVIVE_EVERY, should a member_joined_channel be lost.
        self.world.sender.revive_missing_channel()
        self.settle()

    def misbehave(self, step: int, image: str, index: int) -> None:
        """Slack's faults, each armed before the STEP-th step of the run, which is IMAGE's
        INDEX-th."""
        slack, channel = self.slack, CHANNELS[VISION]
        if step == 0:
            slack.fail_next(2, status=429, retry_after=30, method="chat.postMessage")
            slack.keep_bot_out_of(channel)  # the bot was not invited to #vision yet
        if image == VISION and index == 0:
            # Someone invites the bot while the first build there runs...
            self.midway = lambda: slack.invite_bot(channel)
        if image == VISION and index == 1:
            # ...and Slack's member_joined_channel comes late, before the first approval:
            # what was refused meanwhile goes out.
            self.interactions.bot_joined(channel)
            self.settle()
        if image == IMAGE and index == 2:
            # The bot is removed from #nlp before its first promotion, and invited back
            # while the second build runs; this time member_joined_channel never comes.
            slack.keep_bot_out_of(CHANNELS[IMAGE])
        if image == IMAGE and index == 3:
            self.midway = lambda: slack.invite_bot(CHANNELS[IMAGE])
        if step == 1:
            slack.store_then_fail("timeout", times=1)
            slack.fail_next(2, status=500, method="chat.update")
        elif step == 4:
            slack.store_then_fail("fatal_error", times=2)
            slack.fail_next(1, status=503, method="conversations.history")
        elif step == 6:
            slack.store_then_fail("drop", times=1)
            slack.fail_next(3, status=500, method="chat.postMessage")
        elif step == 7:
            slack.refuse("ratelimited", method="chat.postMessage", times=3)
        elif step == 8:
            slack.fail_next(1, status=429, retry_after=5, method="response_url")
        elif step == 9:
            slack.store_then_fail("http_500", times=1)
            slack.fail_next(1, status=429, retry_after=20, method="chat.update")
        elif step == 11:
            slack.store_then_fail("internal_error", times=1)
            slack.refuse("ratelimited", times=2)

    # -- delivery ---------------------------------------------------------------------------

    def deliver(self) -> None:
        """One delivery pass, a little later on the sender's clock."""
        self.world.later(1)

    def settle(self) -> None:
        """Deliver until nothing is left to send (Retry-After and backoffs pass at once)."""
        for _ in range(PASSES):
            self.world.later(30)
            if self.world.sender.pending() == 0:
                return
        raise AssertionError(f"{self.world.sender.pending()} messages still unsent")

    def work(self) -> None:
        """The job worker runs what was queued (confirmed changes, `--yes`)."""
        self.runtime.worker.run_until_idle()

    # -- steps ------------------------------------------------------------------------------

    def build(self, image: str, sha: str, *, created: float) -> None:
        """A staging build's events and its test report through the relay, a delivery pass
        after each as the relay makes them."""
        build_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"build:{image}:{sha}"))
        events = build_events(build_id, sha, created=created, image=image)
        for n, event in enumerate(events[:-1]):
            if n == len(events) // 2:
                self.midway()
                self.midway = lambda: None
            self.relay.handle_build(event, attributes_of(event))
            self.deliver()
        self.relay.handle_report(image, sha, report(passed=3), build_id)
        self.deliver()
        self.relay.handle_build(events[-1], attributes_of(events[-1]))
        self.settle()

    def approve(self, image: str, sha: str) -> None:
        """The tester presses Approve on the staging announcement in the thread."""
        (announcement,) = self.messages(image, f"`{sha[:7]}` is now in staging")
        approve = buttons({"blocks": announcement.blocks})["Approve"]
        url = self.url(f"approve-{image}-{sha[:7]}")
        self.press(TESTERS[image], approve, url)
        assert "approved" in blocks_text(self.answer(url)), self.answer(url)
        self.settle()

    def promote_confirmed(self, image: str) -> None:
        plan = self.url(f"plan-{image}")
        self.slash(OWNERS[image], f"promote {image}", plan)
        confirm = buttons(self.answer(plan))["Promote to production"]
        url = self.url(f"confirm-{image}")
        gone = self.faults and image == IMAGE
        self.changes.append(Change(OWNERS[image], url, "promoted", gone))
        if gone:
            # The job's answer comes after the response_url's 30 minutes are over.
            self.press(OWNERS[image], confirm, url, then=lambda: self.slack.advance(31 * 60))
        else:
            self.press(OWNERS[image], confirm, url)
        self.settle()

    def promote_yes(self, image: str) -> None:
        url = self.url(f"yes-{image}")
        self.changes.append(Change(OWNERS[image], url, "promoted"))
        self.slash(OWNERS[image], f"promote {image} --yes", url)
        self.settle()

    def rollback_confirmed(self, image: str) -> None:
        plan = self.url(f"rollback-plan-{image}")
        self.slash(OWNERS[image], f"rollback {image} --reason broken", plan)
        confirm = buttons(self.answer(plan))["Roll back production"]
        url = self.url(f"rollback-{image}")
        gone = self.faults and image == VISION
        self.changes.append(Change(OWNERS[image], url, "rolled back", gone))
        if gone:
            # The response_url has taken Slack's 5 posts already: a sixth is refused.
            self.press(OWNERS[image], confirm, url, then=lambda: self.use_up(url))
        else:
            self.press(OWNERS[image], confirm, url)
        self.settle()

    def freeze_and_unfreeze(self, image: str) -> None:
        for command in (f"freeze {image} end of quarter", f"unfreeze {image}"):
            url = self.url(f"{command.split()[0]}-{image}")
            ack = self.slash(OWNERS[image], command, url)
            assert "froze" in blocks_text(ack).lower() or "frozen" in blocks_text(ack).lower(), ack
            self.deliver()
        self.settle()

    # -- Slack's side of a request, as bot.slack.app does it ---------------------------------

    def url(self, name: str) -> str:
        return self.slack.response_url(f"{name}-{self.rng.randrange(10**6)}")

    def slash(self, user: str, text: str, url: str) -> dict[str, Any]:
        """`/nbenv TEXT` by USER: the ack's answer; what follows the ack is done."""
        key = f"slash:{self.rng.randrange(10**12)}"
        outcome = self.interactions.slash(Person(user), text, key=key, response_url=url)
        self.follow_up(outcome, url)
        return outcome.answer or {}

    def press(
        self, user: str, button: dict[str, Any], url: str, then: Callable[[], None] = lambda: None
    ) -> None:
        """USER presses BUTTON; THEN happens before the job it queued runs."""
        key = f"act:{user}:{self.rng.randrange(10**9)}.{self.rng.randrange(10**6):06d}"
        outcome = self.interactions.press(
            Person(user), button["action_id"], button.get("value"), key=key, response_url=url
        )
        then()
        self.follow_up(outcome, url)

    def follow_up(self, outcome: Any, url: str) -> None:
        if outcome.queued:
            self.work()
        if outcome.later is not None:  # as serve's answer process does: computed, then posted
            post_answer(url, self.interactions.compute(outcome.later), replace=outcome.replace)

    def use_up(self, url: str) -> None:
        for n in range(5):
            assert WebhookClient(url).send(text=f"an earlier answer {n}").status_code == 200

    def answer(self, url: str) -> dict[str, Any]:
        (payload, *_) = response_payloads(self.slack, url) or [{}]
        return payload

    def messages(self, image: str, containing: str) -> list[Message]:
        return [
            m
            for m in self.slack.messages(CHANNELS[image]).values()
            if containing in m.text and image in m.text
        ]


# -- what Slack and the store hold afterwards ------------------------------------------------


def threads(slack: FakeSlackApi) -> dict[str, list[list[str]]]:
    """Per channel, each thread's texts (root first, then replies in order), in the order
    the threads were opened; a message outside any thread is a thread of its own."""
    shown: dict[str, list[list[str]]] = {}
    for channel in sorted(set(CHANNELS.values())):
        messages = list(slack.messages(channel).values())
        shown[channel] = [
            [m.text for m in slack.thread(channel, root.ts)]
            for root in messages
            if not root.is_reply
        ]
    return shown


def outline(
    channel: str, shown: dict[str, list[list[str]]], expected: dict[str, list[list[str]]]
) -> list[str]:
    """CHANNEL's threads as shown and as expected, a line a message (when they differ)."""
    lines = []
    for name, got in (("shown", shown), ("expected", expected)):
        lines.append(f"{name} in {channel}:")
        for thread in got[channel]:
            lines += [
                f"  {'  ' * (n > 0)}{text.splitlines()[0][:70]}" for n, text in enumerate(thread)
            ]
    return lines


def keys_posted(slack: FakeSlackApi) -> Counter[str]:
    """How many messages Slack holds for each outbox key (in their metadata)."""
    return Counter(
        m.metadata["event_payload"]["key"]
        for m in slack.messages().values()
        if m.metadata and m.metadata.get("event_type") == "nbenv_outbox"
    )


def store_state(runtime: Any) -> dict[str, Any]:
    """Verdicts (approvals), environments, pointer history and the audit log, without the
    times and IDs that differ from run to run."""
    with runtime.store.read() as tx:
        connection = tx.connection

        def rows(table: Any, *columns: str, order: Any = None) -> list[tuple[Any, ...]]:
            query = select(*(table.c[name] for name in columns))
            found = [tuple(r) for r in connection.execute(query.order_by(order))]
            return found if order is not None else sorted(found, key=repr)

        return {
            "verdicts": rows(t.verdicts, "image", "sha", "user_id", "approved", "void"),
            "environments": rows(t.environments, "image", "env", "sha", "generation"),
            "pointer history": rows(
                t.pointer_history,
                "image",
                "env",
                "old_sha",
                "new_sha",
                "generation",
                "actor",
                order=t.pointer_history.c.id,
            ),
            "audit": rows(
                t.audit_log, "actor", "action", "image", "sha", "outcome", order=t.audit_log.c.seq
            ),
        }


@pytest.fixture
def calm(tmp_path: Path, config_file: Path) -> dict[str, Any]:
    """The script against a well-behaved Slack (on SQLite): what every run must end with."""
    from bot.bootstrap import build_runtime

    runtime = build_runtime(str(config_file), f"sqlite:///{tmp_path / 'calm.db'}")
    with FakeSlackApi() as slack:
        script = Script(runtime, slack, faults=False)
        script.run()
        return {"threads": threads(slack), "store": store_state(runtime)}


def test_slack_faults_lose_double_or_reorder_nothing(runtime: Any, calm: dict[str, Any]) -> None:
    with FakeSlackApi() as slack:
        script = Script(runtime, slack, faults=True)
        script.run()

        # Slack misbehaved as scripted.
        failed = Counter(c.status for c in slack.failed_calls())
        assert failed[429] and failed[500] and failed[404], failed
        refused = Counter((c.response or {}).get("error") for c in slack.calls())
        assert refused["not_in_channel"] and refused["ratelimited"], refused
        out_of = {
            c.args["channel"]
            for c in slack.calls()
            if not c.ok and c.response and c.response["error"] == "not_in_channel"
        }
        assert out_of == set(CHANNELS.values())
        assert any(
            c.status == 429 and c.method.startswith("response_url") for c in slack.failed_calls()
        )
        unclear = {c.method for c in slack.failed_calls() if c.status == 0}
        assert unclear == {"chat.postMessage"}  # a read time-out, a dropped connection

        # Every thread as in the calm run: the same messages, once each, in order.
        shown = threads(slack)
        for channel, expected in calm["threads"].items():
            assert shown[channel] == expected, "\n".join(outline(channel, shown, calm["threads"]))
        doubles = {key: n for key, n in keys_posted(slack).items() if n > 1}
        assert doubles == {}
        with runtime.store.read() as tx:
            statuses = Counter(tx.connection.execute(select(t.outbox.c.status)).scalars().all())
        assert set(statuses) <= {"sent", "superseded", "retired"}, statuses

        # Whoever asked for a change heard the outcome: at its response_url, or directly
        # when that was gone (expired, used up); once.
        for change in script.changes:
            answers = [blocks_text(p) for p in response_payloads(slack, change.url)]
            told = [text for text in answers if change.answer in text]
            assert len(told) == (0 if change.gone else 1), (change, answers)
        for owner in OWNERS.values():
            direct = [m.text for m in slack.messages(owner).values()]
            gone = [c.answer for c in script.changes if c.gone and c.user == owner]
            assert len(direct) == len(gone) == 1, (owner, direct)
            assert gone[0] in direct[0], direct

        # Slack's faults changed nothing in the store.
        assert store_state(runtime) == calm["store"]
        assert runtime.nbenv.verify_audit().status == "intact"
