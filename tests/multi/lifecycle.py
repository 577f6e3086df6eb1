"""A scripted lifecycle per image, run against a Deployment, and the checks that follow it.

Each image goes: build v1 (events duplicated, reordered, spread over both relays) →
testers approve (each press delivered twice, to both bots at once) → promote through the
plan, its confirmation pressed on both bots at once → build v2 → approve → promote
`--yes`, the slash command retried to the other bot → roll back through the plan, the
same confirming press delivered to both bots. A seeded schedule interleaves the images
and runs two images' steps at a time, so every step of one image meets another's.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.builds.conftest import attributes_of, build_events, event_data, report, roots
from tests.conftest import OWNER, TESTER, TESTER2, sha_of
from tests.slack.bot import (
    BotServer,
    blocks_text,
    buttons,
    channel_messages,
    response_payloads,
    wait_until,
)
from tests.slack.bot import (
    report as bot_report,
)
from tests.support.deployment import Deployment, relay_token

REPO_ROOT = Path(__file__).resolve().parents[2]
TWO_APPROVALS = "nlp.two-approvals"
IMAGES = ("nlp.t01", "nlp.t02", TWO_APPROVALS)
WAIT_S = 30.0  # generous: two bots, two relays and PostgreSQL share 2 loaded cores


def testers_of(image: str) -> tuple[str, ...]:
    return (TESTER, TESTER2) if image == TWO_APPROVALS else (TESTER,)


@dataclass
class Expected:
    """What the lifecycle asked for, to compare with what happened."""

    shas: dict[str, list[str]] = field(default_factory=dict)  # image → SHAs built
    approvals: set[tuple[str, str, str]] = field(default_factory=set)  # image, SHA, tester
    promotes: Counter[str] = field(default_factory=Counter)
    rollbacks: Counter[str] = field(default_factory=Counter)
    # response_url → how many answers it must get (a retried request shares its URL)
    answers: dict[str, int] = field(default_factory=dict)


class Lifecycle:
    def __init__(self, deployment: Deployment, runtime: Any, seed: int) -> None:
        self.deployment = deployment
        self.slack = deployment.slack
        self.runtime = runtime
        self.seed = seed
        self.expected = Expected()
        self.log: list[str] = []
        self.retried: set[str] = set()
        self.restarts: list[float] = []  # when the database was restarted, not yet healed
        self.prefer_relay: int | None = None  # response_urls whose request was made again
        self.kills: list[Any] = []  # kill hooks armed in the fake Slack (tests.support.deployment)
        self._healed: set[int] = set()
        self._heal_lock = threading.Lock()

    # -- the schedule ---------------------------------------------------------------------

    def steps(self, image: str) -> Iterator[Callable[[], None]]:
        rng = random.Random(f"{self.seed}:{image}")
        v1, v2 = sha_of(f"{image}:v1"), sha_of(f"{image}:v2")
        self.expected.shas[image] = [v1, v2]
        yield lambda: self.build(image, v1, created=0, rng=rng)
        yield lambda: self.approve(image, v1, rng=rng)
        yield lambda: self.promote_by_confirming_twice(image, v1, rng=rng)
        yield lambda: self.build(image, v2, created=600, rng=rng)
        yield lambda: self.approve(image, v2, rng=rng)
        yield lambda: self.promote_yes_retried(image, v2, rng=rng)
        yield lambda: self.rollback_press_redelivered(image, v1, rng=rng)

    def run(
        self, images: tuple[str, ...] = IMAGES, between: Callable[[int], None] | None = None
    ) -> None:
        """Run every image's steps, two images at a time in a seeded order; BETWEEN(round)
        is called between rounds (a fault to inject)."""
        rng = random.Random(self.seed)
        chains = {image: self.steps(image) for image in images}
        pending: dict[str, Callable[[], None]] = {}
        for image, chain in chains.items():
            pending[image] = next(chain)
        round_ = 0
        with ThreadPoolExecutor(2) as pool, self._steps_noted():
            while pending:
                chosen = rng.sample(sorted(pending), min(2, len(pending)))
                steps = [(round_, image, pending[image]) for image in chosen]
                list(pool.map(lambda step: self._timed(*step), steps))
                for image in chosen:
                    following = next(chains[image], None)
                    if following is None:
                        del pending[image]
                    else:
                        pending[image] = following
                round_ += 1
                if between is not None:
                    between(round_)

    @contextmanager
    def _steps_noted(self) -> Iterator[None]:
        try:
            yield
        except BaseException as error:
            error.add_note("steps so far:\n" + "\n".join(self.log))
            raise

    def _timed(self, round_: int, image: str, step: Callable[[], None]) -> None:
        began = time.monotonic()
        try:
            step()
        finally:
            # Shown when the test fails: which step of which round waited, and how long.
            self.log.append(f"round {round_} {image}: {time.monotonic() - began:.1f}s")

    # -- steps ----------------------------------------------------------------------------

    def bot(self, rng: random.Random) -> BotServer:
        return rng.choice(self.deployment.bots)

    def both_bots(self, rng: random.Random) -> list[BotServer]:
        bots = list(self.deployment.bots)
        rng.shuffle(bots)
        return bots

    def url(self, name: str, answers: int = 1) -> str:
        url = self.slack.response_url(f"{name}-{uuid.uuid4().hex[:8]}")
        self.expected.answers[url] = answers
        return url

    def build(self, image: str, sha: str, *, created: float, rng: random.Random) -> None:
        """A staging build's events and its test report, each delivered twice, reordered,
        to either relay, four at a time."""
        build_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"build:{image}:{sha}"))
        stream = [
            event_data(event, attributes_of(event), message_id=f"{build_id}:{n}")
            for n, event in enumerate(build_events(build_id, sha, created=created, image=image))
        ]
        attributes = {"nbenv": "test-report", "image": image, "sha": sha, "buildId": build_id}
        report_data = event_data(report(passed=3), attributes, message_id=f"{build_id}:report")
        stream.append(report_data)
        stream = stream * 2
        rng.shuffle(stream)
        # The report is a step of the build: its first delivery precedes the SUCCESS.
        first_report = stream.index(report_data)
        first_success = next(
            i
            for i, data in enumerate(stream)
            if data["message"]["attributes"].get("status") == "SUCCESS"
        )
        if first_success < first_report:
            stream[first_success], stream[first_report] = (
                stream[first_report],
                stream[first_success],
            )
        relays = [rng.randrange(len(self.deployment.relays)) for _ in stream]
        if self.prefer_relay is not None:  # a kill is armed there: the first half goes to it
            relays[: len(relays) // 2] = [self.prefer_relay] * (len(relays) // 2)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(self.deliver_event, relays, stream))
        # What a killed relay did not acknowledge, Pub/Sub delivers again, to a live one.
        for data, answer in zip(stream, answers, strict=True):
            while answer != (200, "OK"):
                assert answer is None, answer  # only a lost connection is redelivered
                self.heal()
                answer = self.deliver_event(rng.randrange(len(self.deployment.relays)), data)
        self.wait(lambda: self.staging(image) == sha, f"{image} staging at {sha[:7]}")
        self.announcement(image, sha)

    def deliver_event(self, relay: int, data: dict[str, Any]) -> tuple[int, str] | None:
        """Pub/Sub's push to relay RELAY: its answer, or None when the relay is gone."""
        try:
            return self.deployment.relays[relay].binary(data)
        except OSError:  # killed mid-request, or not restarted yet
            return None

    # -- faults ---------------------------------------------------------------------------

    def request(self, url: str, send: Callable[[], Any]) -> Any:
        """SEND a request to a bot; should its worker be killed while it handles it, the
        request is made again once a worker is back (as Slack retries, or the person asks
        again). Answers to URL may then number one more or one less than asked for."""
        for _ in range(3):
            try:
                return send()
            except OSError:  # the connection was cut: the worker was killed
                self.retried.add(url)
                self.heal()
                self.deployment.revive()
        return send()

    def wait(self, predicate: Callable[[], Any], what: str) -> Any:
        """Wait for PREDICATE, healing what a fault broke meanwhile (as the platform would)."""
        return wait_until(lambda: self.heal() or predicate(), WAIT_S, what)

    def heal(self) -> None:
        """After a kill: start the process again (Cloud Run, Cloud Functions and gunicorn
        do); after a kill or a database restart: let the next sender take over what a
        sender had claimed and could not finish, once its lease is over (the test moves
        that sender's clock; see take_over_outbox)."""
        with self._heal_lock:
            for n, hook in enumerate(self.kills):
                if n in self._healed or not hook.fired.is_set():
                    continue
                self._healed.add(n)
                self.prefer_relay = None
                self.deployment.revive()
                take_over_outbox(self.runtime, self.slack, hook.at)
            while self.restarts:
                take_over_outbox(self.runtime, self.slack, self.restarts.pop(0))

    def database_restarted(self) -> None:
        """The database was restarted: a sender cut off mid-message keeps its claim until
        its lease is over (the message is late, not lost)."""
        self.restarts.append(time.time())

    def kill_relay_on_its_next_message(self, relay: int, match: Callable[..., bool]) -> None:
        """Arm a kill of relay RELAY on its next Slack call, and send it the next build's
        events so that it makes one."""
        assert self.deployment.relays[relay].process is not None
        victims = {relay_token(relay): self.deployment.relays[relay].process.pid}
        self.kills.append(self.slack.kill_on(match, victims))
        self.prefer_relay = relay

    def announcement(self, image: str, sha: str) -> Any:
        text = f"`{sha[:7]}` is now in staging"
        return self.wait(
            lambda: [m for m in channel_messages(self.slack, text) if image in m.text],
            f"the staging announcement of {image} {sha[:7]}",
        )[-1]

    def approve(self, image: str, sha: str, *, rng: random.Random) -> None:
        """Each tester presses Approve once; Slack delivers each press twice (a retry),
        once to each bot, at the same time."""
        approve = buttons({"blocks": self.announcement(image, sha).blocks})["Approve"]
        presses = []
        for tester in testers_of(image):
            url = self.url(f"approve-{tester}-{image}", answers=2)
            action_ts = f"{rng.randrange(10**9)}.{rng.randrange(10**6):06d}"
            for retry, bot in zip((None, 1), self.both_bots(rng), strict=True):
                presses.append((bot, tester, url, action_ts, retry))
        with ThreadPoolExecutor(len(presses)) as pool:
            statuses = list(
                pool.map(
                    lambda p: (
                        self.request(
                            p[2],
                            lambda: p[0].action(
                                p[1], approve, response_url=p[2], action_ts=p[3], retry=p[4]
                            ),
                        ).status
                    ),
                    presses,
                )
            )
        assert statuses == [200] * len(presses)
        self.expected.approvals.update((image, sha, tester) for tester in testers_of(image))
        for url in {p[2] for p in presses}:
            if url in self.retried:  # cut by a kill, and made again: one answer at least
                text = blocks_text(self.answer(url))
                assert "approved" in text or "already recorded" in text, text
                continue
            texts = [blocks_text(self.answer(url, n)) for n in (1, 2)]
            assert sum("approved" in t for t in texts) >= 1, texts

    def promote_by_confirming_twice(self, image: str, sha: str, *, rng: random.Random) -> None:
        """`/nbenv promote IMAGE`; its confirmation pressed on both bots at once (two
        presses): one promotes, the other is refused."""
        plan_url = self.url(f"plan-{image}")
        bot = self.bot(rng)
        ack = self.request(
            plan_url, lambda: bot.slash(OWNER, f"promote {image}", response_url=plan_url)
        )
        assert ack.status == 200
        confirm = buttons(self.answer(plan_url))["Promote to production"]
        urls = [self.url(f"confirm-{n}-{image}") for n in range(2)]
        bots = self.both_bots(rng)
        with ThreadPoolExecutor(2) as pool:
            list(
                pool.map(
                    lambda n: self.request(
                        urls[n], lambda: bots[n].action(OWNER, confirm, response_url=urls[n])
                    ),
                    range(2),
                )
            )
        texts = [blocks_text(self.answer(url)) for url in urls]
        assert sum("promoted" in t for t in texts) == 1, texts
        # The other is refused, whichever check it meets first (the plan moved, or its
        # SHA already is in production).
        assert sum(t.startswith("⚠️") for t in texts) == 1, texts
        self.expected.promotes[image] += 1
        assert self.production(image) == sha

    def promote_yes_retried(self, image: str, sha: str, *, rng: random.Random) -> None:
        """`/nbenv promote IMAGE --yes`, the request retried by Slack to the other bot."""
        url = self.url(f"yes-{image}")
        bots = self.both_bots(rng)
        body = bots[0].slash_body(OWNER, f"promote {image} --yes", response_url=url)
        with ThreadPoolExecutor(2) as pool:
            acks = list(
                pool.map(
                    lambda n: self.request(url, lambda: bots[n].signed(body, retry=n or None)),
                    range(2),
                )
            )
        assert [a.status for a in acks] == [200, 200]
        text = blocks_text(self.answer(url))
        assert "promoted" in text, text
        self.expected.promotes[image] += 1
        assert self.production(image) == sha

    def rollback_press_redelivered(self, image: str, sha: str, *, rng: random.Random) -> None:
        """`/nbenv rollback IMAGE`; the confirming press delivered to both bots at once."""
        plan_url = self.url(f"rollback-plan-{image}")
        command = f"rollback {image} --reason broken"
        bot = self.bot(rng)
        ack = self.request(plan_url, lambda: bot.slash(OWNER, command, response_url=plan_url))
        assert ack.status == 200
        confirm = buttons(self.answer(plan_url))["Roll back production"]
        url = self.url(f"rollback-{image}")
        action_ts = f"{rng.randrange(10**9)}.{rng.randrange(10**6):06d}"
        bots = self.both_bots(rng)
        with ThreadPoolExecutor(2) as pool:
            list(
                pool.map(
                    lambda n: self.request(
                        url,
                        lambda: bots[n].action(
                            OWNER, confirm, response_url=url, action_ts=action_ts, retry=n or None
                        ),
                    ),
                    range(2),
                )
            )
        text = blocks_text(self.answer(url))
        assert "rolled back" in text, text
        self.expected.rollbacks[image] += 1
        assert self.production(image) == sha

    def answer(self, url: str, count: int = 1) -> dict[str, Any]:
        """The COUNT-th answer posted to response_url URL."""
        return self.wait(
            lambda: response_payloads(self.slack, url)[count - 1 : count], f"an answer at {url}"
        )[0]

    def promote_with_its_job_worker_killed(self, image: str) -> None:
        """`/nbenv promote IMAGE --yes` queues a job; the bot workers, the one running it
        among them, are killed (SIGKILL) while it is held mid-way (the test holds the lock
        every audited write takes); another worker takes the job up after its lease, and
        the owner is answered once: promoted."""
        from sqlalchemy import text

        from bot.bootstrap import job_handlers
        from bot.service.jobs import LEASE, JobWorker
        from bot.store.uow import Store, utcnow

        sha = sha_of(f"{image}:job")
        self.runtime.nbenv.publish(OWNER, image, sha, report=bot_report(True))
        self.runtime.nbenv.handle(TESTER, f"approve {image}")
        self.expected.approvals.add((image, sha, TESTER))
        engine = self.runtime.store.engine
        url = self.url(f"job-{image}")
        # The job is held mid-way: every audited write waits for the audit head's lock.
        trigger = f"{uuid.uuid5(uuid.NAMESPACE_URL, image).int % 10**13}.1.job"
        with engine.connect() as holder:
            holder.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
            bot = self.deployment.bots[0]
            command = f"promote {image} --yes"
            assert bot.slash(OWNER, command, response_url=url, trigger=trigger).status == 200

            def job_status() -> str | None:
                with engine.connect() as probe:
                    return probe.execute(
                        text("SELECT status FROM jobs WHERE dedupe_key LIKE :key"),
                        {"key": f"%{trigger}%"},
                    ).scalar()

            # Claimed by one of the bots' job threads, which cannot finish it: both bot
            # workers are killed, the one running it among them.
            wait_until(lambda: job_status() == "running", WAIT_S, "the promote job claimed")
            for pid in self.deployment.bot_worker_pids():
                with contextlib.suppress(ProcessLookupError):  # gone already: as good
                    os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
            holder.rollback()
        self.deployment.revive()
        take_over_outbox(self.runtime, self.slack, killed_at)
        after_lease = utcnow() + LEASE + timedelta(seconds=1)
        worker = JobWorker(
            Store(engine, clock=lambda: after_lease),
            job_handlers(self.runtime.nbenv),
            notifier=self.runtime.nbenv.context.notifier,
        )
        assert worker.run_once() is True
        assert "promoted" in blocks_text(self.answer(url))
        self.expected.promotes[image] += 1
        assert self.production(image) == sha

    # -- state ----------------------------------------------------------------------------

    def pointers(self, image: str) -> dict[str, str | None]:
        from bot.domain.names import Env

        with self.runtime.store.read() as tx:
            state = tx.pointers.state(image)
        return {env.value: state.sha(env) for env in Env}

    def staging(self, image: str) -> str | None:
        return self.pointers(image)["staging"]

    def production(self, image: str) -> str | None:
        return self.pointers(image)["production"]


def take_over_outbox(runtime: Any, slack: Any, killed_at: float) -> None:
    """Another sender takes over the messages a killed process had claimed, as any sender
    does once their lease is over: its clock is set just past that lease, so that only
    claims made before the kill look expired (live senders' claims are newer)."""
    from datetime import UTC, datetime

    from slack_sdk import WebClient

    from bot.slack.outbox import LEASE, OutboxSender
    from bot.store.uow import Store

    time.sleep(1.0)  # the live senders finish the calls they were making at the kill
    after_lease = datetime.fromtimestamp(killed_at, UTC) + LEASE + timedelta(seconds=0.5)
    store = Store(runtime.store.engine, clock=lambda: after_lease)
    OutboxSender(store, WebClient(token="xoxb-take-over", base_url=slack.base_url)).deliver_due()


# -- the checks ---------------------------------------------------------------------------


def wait_delivered(runtime: Any, timeout: float = WAIT_S) -> None:
    """Nothing queued for Slack is left unsent: the bots' senders are done."""

    def settled() -> bool:
        with runtime.store.read() as tx:
            return tx.outbox.unsent_count() == 0

    wait_until(settled, timeout, "every outbox message delivered")


def check_invariants(life: Lifecycle, config: Path, db_url: str) -> None:
    from bot.store import tables as t

    runtime, slack, expected = life.runtime, life.slack, life.expected
    wait_delivered(runtime)

    # One thread root per SHA, and every thread message posted once.
    for image, shas in expected.shas.items():
        for sha in shas:
            assert len(roots(slack, sha, image)) == 1, (image, sha)
    keys = [
        call.args["metadata"]["event_payload"]["key"]
        for call in slack.calls("chat.postMessage")
        if call.args.get("metadata")
    ]
    assert [k for k, n in Counter(keys).items() if n > 1] == []
    with runtime.store.read() as tx:
        dead = tx.connection.execute(select(t.outbox).where(t.outbox.c.status == "dead")).all()
    assert dead == []

    # Every person who asked got their answers, no more (give or take the one answer a
    # request cut by a kill may have lost, or its repetition added).
    for url, count in expected.answers.items():
        answers = len(response_payloads(slack, url))
        if url in life.retried:
            assert max(1, count - 1) <= answers <= count + 1, url
        else:
            assert answers == count, url

    with runtime.store.read() as tx:
        verdicts = tx.connection.execute(select(t.verdicts)).all()
        history = tx.connection.execute(
            select(t.pointer_history).order_by(t.pointer_history.c.id)
        ).all()
        audit = tx.audit.entries()
        environments = tx.connection.execute(select(t.environments)).all()

    # Only this lifecycle's images: another may share the database.
    images = {*expected.shas, *expected.promotes, *(a[0] for a in expected.approvals)}
    verdicts = [v for v in verdicts if v.image in images]
    history = [m for m in history if m.image in images]
    audit = [e for e in audit if e.image in images]
    environments = [e for e in environments if e.image in images]

    # Each approval counted once: one verdict per tester and SHA, and one audit entry.
    approvals = Counter((v.image, v.sha, v.user_id) for v in verdicts if v.approved)
    wanted = dict.fromkeys(expected.approvals, 1)
    assert dict(approvals) == wanted
    audited = Counter(
        (e.image, e.sha, e.actor) for e in audit if e.action == "approve" and e.outcome == "ok"
    )
    assert dict(audited) == wanted

    # Each promote and rollback applied once.
    ok = Counter((e.action, e.image) for e in audit if e.outcome == "ok")
    for image in {*expected.promotes, *expected.rollbacks}:
        assert ok["promote", image] == expected.promotes[image], image
        assert ok["rollback", image] == expected.rollbacks[image], image

    # The pointer history: production and fallback never empty once set; replayed, it
    # gives the pointers and generations as they are; move for move, the audit log.
    replayed: dict[tuple[str, str], tuple[str | None, int]] = {}
    for move in history:
        before_sha, before_generation = replayed.get((move.image, move.env), (None, 0))
        assert move.old_sha == before_sha, move
        assert move.generation == before_generation + 1, move
        if move.env in ("production", "fallback") and before_sha is not None:
            assert move.new_sha is not None, move
        replayed[move.image, move.env] = (move.new_sha, move.generation)
    assert {
        (e.image, e.env): (e.sha, e.generation) for e in environments if e.generation
    } == replayed
    moves = Counter((m.image, m.env, m.old_sha, m.new_sha) for m in history)
    changes = Counter(
        (e.image, change["env"], change["old"], change["new"])
        for e in audit
        if e.outcome == "ok" and e.action in ("publish", "promote", "rollback")
        for change in e.details.get("changes") or []
    )
    assert moves == changes

    # The audit chain is intact, as `nbenv audit verify` checks it.
    verify = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(config), "audit", "verify"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**_env(), "NBENV_DATABASE_URL": db_url},
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
