"""DESIGN.md §2 end to end on the gcp backend, against the fake Google APIs and fake Slack:
build (trigger) → relay → staging tag → approve → promote (tags moved, fallback kept) →
instance from fallback pinned to its SHA → rollback (owners of instances told)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bot.domain.names import Env
from tests.conftest import IMAGE, OWNER, TESTER, USER, sha_of
from tests.gcp.conftest import GOOGLE_ACCOUNTS, PASSED, REGISTRY
from tests.support.fake_google import FakeGoogleApis
from tests.support.slack_api import FakeSlackApi

TOKEN = "xoxb-gcp-flow"
CHANNEL = "C01NLP"


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlackApi]:
    with FakeSlackApi(token=TOKEN) as fake:
        monkeypatch.setenv("SLACK_API_URL", fake.base_url)
        yield fake


@pytest.fixture
def relay(gcp_runtime, slack):  # type: ignore[no-untyped-def]
    from bot.builds.relay import BuildRelay
    from bot.slack.client import web_client
    from bot.slack.outbox import OutboxSender

    return BuildRelay(gcp_runtime.nbenv, OutboxSender(gcp_runtime.store, web_client(TOKEN)))


def _built(runtime: Any, relay: Any, google: FakeGoogleApis, label: str) -> str:
    """`/nbenv build`, then Cloud Build's events for it reaching the relay."""
    sha = sha_of(label)
    google.heads["staging"] = sha  # a push to the staging branch
    before = set(google.builds)
    runtime.nbenv.handle(OWNER, f"build {IMAGE}")
    runtime.worker.run_until_idle()
    (build_id,) = set(google.builds) - before
    backend = runtime.nbenv.backend
    # What Pub/Sub would carry: the Build resource as Cloud Build's API returns it.
    assert relay.handle_build(backend.get_build(build_id)) == "applied"
    google.advance_build(build_id, "WORKING")
    relay.handle_build(backend.get_build(build_id))
    relay.handle_report(IMAGE, sha, PASSED, build_id)
    google.advance_build(build_id, "SUCCESS")
    relay.handle_build(backend.get_build(build_id))
    return sha


def _thread(slack: FakeSlackApi, sha: str) -> list[str]:
    for message in slack.messages(CHANNEL).values():
        if not message.is_reply and sha[:7] in message.text:
            return [m.text for m in slack.thread(CHANNEL, message.ts)]
    raise AssertionError(f"no thread for {sha[:7]}")


def test_build_relay_approve_promote_instance_and_rollback_on_gcp(
    gcp_runtime, relay, google, slack
) -> None:
    app = gcp_runtime.nbenv

    # A build of the staging branch: its success reaches staging, tag and all.
    first = _built(gcp_runtime, relay, google, "first")
    assert google.env_tags(IMAGE) == {"staging": first, "production": None, "fallback": None}
    relay.deliver(IMAGE, first)
    thread = _thread(slack, first)
    assert any("is now in staging" in text for text in thread)

    app.handle(TESTER, f"approve {IMAGE}")
    app.handle(OWNER, f"promote {IMAGE}")
    second = _built(gcp_runtime, relay, google, "second")
    app.handle(TESTER, f"approve {IMAGE}")
    preview = app.handle(OWNER, f"promote {IMAGE} --dry-run").data
    assert [(c["env"], c["old"], c["new"]) for c in preview["changes"]] == [
        ("fallback", None, first),
        ("production", first, second),
    ]
    app.handle(OWNER, f"promote {IMAGE}")

    # Tags moved, the old production kept as fallback.
    assert google.env_tags(IMAGE) == {"staging": second, "production": second, "fallback": first}

    # Production is broken: a user self-serves an instance from fallback, pinned to its SHA.
    app.handle(USER, f"instance {IMAGE} --env fallback --name safe-one")
    app.handle(USER, f"instance {IMAGE} --name broken-one")
    gcp_runtime.worker.run_until_idle()
    pinned = {
        name.rsplit("/", 1)[-1]: (i["gceSetup"]["containerImage"], i["labels"]["nbenv-env"])
        for name, i in google.instances.items()
    }
    assert pinned == {
        "safe-one": ({"repository": f"{REGISTRY}/{IMAGE}", "tag": first}, "fallback"),
        "broken-one": ({"repository": f"{REGISTRY}/{IMAGE}", "tag": second}, "production"),
    }
    assert app.who_runs(IMAGE, [first, second]) == {first: [USER], second: [USER]}
    # Created for the person who asked ("single user" access): with the role docs/deploy.md
    # grants everyone who gets instances, their Google account opens it, and nobody else's.
    for person in (USER, OWNER):
        google.grant_service_account_user(google.default_compute_account, GOOGLE_ACCOUNTS[person])
    assert google.can_open("safe-one", GOOGLE_ACCOUNTS[USER])
    assert not google.can_open("safe-one", GOOGLE_ACCOUNTS[OWNER])

    # The owner rolls back: production is the fallback again, in the store and the registry.
    reply = app.handle(OWNER, f'rollback {IMAGE} --reason "login broken"')
    assert reply.data["synced"] is True
    assert google.env_tags(IMAGE) == {"staging": second, "production": first, "fallback": first}
    with gcp_runtime.store.read() as tx:
        assert tx.versions.get(IMAGE, second).revoked

    relay.sender.drain()
    rolled_back = _thread(slack, second)
    assert any("promoted `" + second[:7] in text for text in rolled_back)
    assert any("was rolled back and revoked" in text for text in rolled_back)
    assert any(
        f"Still running `{second[:7]}`: <@{USER}> (1 instance(s))" in text for text in rolled_back
    )
    assert any("rolled back production" in text for text in _thread(slack, first))
    check = app.verify_audit()
    assert check.ok, check.describe()


def test_a_build_of_an_explicit_sha_is_test_only_as_on_the_local_backend(
    gcp_runtime, relay, google, slack
) -> None:
    """Cloud Build runs the trigger by `commitSha`: no BRANCH_NAME, so its SUCCESS
    publishes nothing. The owner is told so when the build is queued."""
    sha = sha_of("pinned by sha")
    google.heads["staging"] = sha  # even the staging branch's own tip

    reply = gcp_runtime.nbenv.handle(OWNER, f"build {IMAGE} {sha}")
    gcp_runtime.worker.run_until_idle()
    (build_id,) = google.builds
    backend = gcp_runtime.nbenv.backend
    relay.handle_build(backend.get_build(build_id))
    relay.handle_report(IMAGE, sha, PASSED, build_id)
    google.advance_build(build_id, "SUCCESS")
    relay.handle_build(backend.get_build(build_id))

    assert "test only: the version and its test report are recorded" in reply.text
    assert google.env_tags(IMAGE)["staging"] is None
    with gcp_runtime.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
        assert version is not None and version.tests_passed
        assert tx.pointers.state(IMAGE).sha(Env.STAGING) is None


def _buttons(message: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """A message's buttons: action_id → (label, value)."""
    found = {}
    for block in message.blocks or []:
        for element in block.get("elements", []):
            if element.get("type") == "button":
                found[element["action_id"]] = (
                    element["text"]["text"],
                    json.loads(element["value"]),
                )
    return found


def test_whoever_runs_a_rolled_back_sha_is_told_directly_and_moves_with_two_presses(
    gcp_runtime, relay, google, slack
) -> None:
    from bot.domain.names import Person
    from bot.slack.interactions import Interactions

    app = gcp_runtime.nbenv
    first = _built(gcp_runtime, relay, google, "first")
    app.handle(TESTER, f"approve {IMAGE}")
    app.handle(OWNER, f"promote {IMAGE}")
    second = _built(gcp_runtime, relay, google, "second")
    app.handle(TESTER, f"approve {IMAGE}")
    app.handle(OWNER, f"promote {IMAGE}")
    app.handle(USER, f"instance {IMAGE} --name on-second")
    gcp_runtime.worker.run_until_idle()

    app.handle(OWNER, f'rollback {IMAGE} --reason "login broken"')
    relay.sender.drain()

    # The person running the revoked SHA hears it in a direct message, not only in the thread.
    (told,) = [m for m in slack.messages(USER).values() if "was rolled back" in m.text]
    assert f"`{second[:7]}` is revoked" in told.text and "`on-second`" in told.text
    assert "nothing is stopped until you press" in told.text
    buttons = _buttons(told)
    assert set(buttons) == {"nbenv_replace", "nbenv_stop"}
    assert buttons["nbenv_stop"][0] == "Stop on-second"
    # Nothing was stopped by the rollback itself, and the listing marks the instance.
    listing = app.handle(USER, f"instances {IMAGE}")
    (row,) = listing.data
    assert row["revoked"] is True and row["state"] in ("starting", "running")
    assert "⛔ runs a revoked SHA" in listing.text

    # The first press starts a replacement from production, for the same person.
    interactions = Interactions(app)
    value = json.dumps(buttons["nbenv_replace"][1])
    url = slack.response_url("replace")
    interactions.press(Person(USER), "nbenv_replace", value, key="press-1", response_url=url)
    gcp_runtime.worker.run_until_idle()
    replacement = {
        name.rsplit("/", 1)[-1]: instance
        for name, instance in google.instances.items()
        if not name.endswith("/on-second")
    }
    (made,) = replacement.values()
    assert made["gceSetup"]["containerImage"]["tag"] == first
    assert made["labels"]["nbenv-env"] == "production"
    assert made["labels"]["nbenv-requested-by"] == USER.lower()
    assert all(i["state"] != "STOPPED" for i in google.instances.values())

    # The second press stops the old one; only its owner's press does (or an owner's).
    stop = json.dumps(buttons["nbenv_stop"][1])
    other = slack.response_url("stop-by-other")
    interactions.press(Person(TESTER), "nbenv_stop", stop, key="press-2", response_url=other)
    gcp_runtime.worker.run_until_idle()
    relay.sender.drain()
    (answer,) = [c.args["text"] for c in slack.calls("response_url:/response/stop-by-other")]
    assert "belongs to" in answer
    google.finish_operations()
    states = {row["name"]: row["state"] for row in app.handle(USER, f"instances {IMAGE}").data}
    assert states["on-second"] != "stopped"

    url = slack.response_url("stop")
    interactions.press(Person(USER), "nbenv_stop", stop, key="press-3", response_url=url)
    gcp_runtime.worker.run_until_idle()
    states = {row["name"]: row["state"] for row in app.handle(USER, f"instances {IMAGE}").data}
    assert states["on-second"] == "stopped"
    check = app.verify_audit()
    assert check.ok, check.describe()
