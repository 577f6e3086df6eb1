"""The test helpers themselves: if these fail, nothing built on them can be trusted."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from . import postgres as pg
from .postgres import PostgresCluster, PostgresNotFoundError, require_postgres_bin
from .slack_api import FakeSlackApi

REPO_ROOT = Path(__file__).resolve().parents[2]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster(require_postgres_bin()) as running:
        yield running


@pytest.mark.postgres
def test_cluster_serves_sqlalchemy_with_test_settings(cluster: PostgresCluster) -> None:
    assert cluster.url == f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/postgres"
    engine = sa.create_engine(cluster.url)
    try:
        with engine.connect() as conn:
            settings = {
                name: conn.execute(sa.text(f"SHOW {name}")).scalar_one()
                for name in ("fsync", "max_connections", "listen_addresses", "server_encoding")
            }
            socket_dir = conn.execute(sa.text("SHOW unix_socket_directories")).scalar_one()
    finally:
        engine.dispose()
    assert settings == {
        "fsync": "off",
        "max_connections": "100",
        "listen_addresses": "127.0.0.1",
        "server_encoding": "UTF8",
    }
    assert Path(socket_dir).parent == cluster.base_dir
    assert cluster.startup_seconds is not None and cluster.startup_seconds < 30


@pytest.mark.postgres
def test_create_database_is_isolated(cluster: PostgresCluster) -> None:
    first = sa.create_engine(cluster.create_database("isolation_a"))
    second = sa.create_engine(cluster.create_database())
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE pointer (env text PRIMARY KEY, sha text)"))
            conn.execute(sa.text("INSERT INTO pointer VALUES ('staging', 'abc')"))
        with second.connect() as conn:
            assert conn.execute(sa.text("SELECT to_regclass('pointer')")).scalar() is None
        with first.connect() as conn:
            assert conn.execute(sa.text("SELECT sha FROM pointer")).scalar_one() == "abc"
    finally:
        first.dispose()
        second.dispose()

    with pytest.raises(Exception, match="already exists"):
        cluster.create_database("isolation_a")


@pytest.mark.postgres
def test_drop_database_disconnects_users(cluster: PostgresCluster) -> None:
    url = cluster.create_database("to_drop")
    engine = sa.create_engine(url)
    held = engine.connect()  # an open session must not block the drop
    try:
        cluster.drop_database("to_drop")
    finally:
        held.invalidate()
        held.close()
        engine.dispose()
    check = sa.create_engine(cluster.url)
    try:
        with check.connect() as conn:
            names = conn.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
    finally:
        check.dispose()
    assert "to_drop" not in names
    cluster.drop_database("to_drop")  # dropping again is not an error


@pytest.mark.parametrize("name", ["Upper", "x; DROP DATABASE postgres", "1abc", "a" * 64, ""])
def test_create_database_rejects_unsafe_names(name: str) -> None:
    # The name is checked before any server is needed.
    with pytest.raises(ValueError, match="invalid database name"):
        pg._check_db_name(name)


@pytest.mark.postgres
def test_stop_kills_server_and_removes_dir() -> None:
    cluster = PostgresCluster(require_postgres_bin()).start()
    base, port = cluster.base_dir, cluster.port
    assert base is not None and port is not None
    assert (base / "data" / "PG_VERSION").is_file()
    assert _port_open(port)

    cluster.stop()
    assert not base.exists()
    assert not _port_open(port)
    assert not cluster.running
    with pytest.raises(RuntimeError, match="not started"):
        _ = cluster.url
    cluster.stop()  # idempotent


@pytest.mark.postgres
def test_interpreter_exit_removes_a_forgotten_cluster() -> None:
    require_postgres_bin()
    script = textwrap.dedent(
        """
        import json
        from tests.support.postgres import PostgresCluster
        cluster = PostgresCluster().start()
        print(json.dumps({"dir": str(cluster.base_dir), "port": cluster.port}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    info = json.loads(out.strip().splitlines()[-1])
    assert not Path(info["dir"]).exists()
    assert not _port_open(info["port"])


def test_find_postgres_bin_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("initdb", "pg_ctl", "postgres"):
        program = tmp_path / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    monkeypatch.setenv("NBENV_PG_BIN", str(tmp_path))
    assert pg.find_postgres_bin() == tmp_path

    (tmp_path / "pg_ctl").unlink()
    with pytest.raises(PostgresNotFoundError, match="NBENV_PG_BIN"):
        pg.find_postgres_bin()


def test_missing_server_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "find_postgres_bin", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_postgres_bin()
    assert skipped.value.msg == "PostgreSQL server not installed: apt-get install postgresql"


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setattr(pg, "find_postgres_bin", lambda: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        require_postgres_bin()


def test_start_without_binaries_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "find_postgres_bin", lambda: None)
    cluster = PostgresCluster()
    with pytest.raises(PostgresNotFoundError, match="apt-get install postgresql"):
        cluster.start()
    assert not cluster.running


# -- Slack Web API ------------------------------------------------------------------------


@pytest.fixture
def slack() -> Iterator[FakeSlackApi]:
    with FakeSlackApi() as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlackApi) -> WebClient:
    return WebClient(token="xoxb-test", base_url=slack.base_url)


def test_base_url_looks_like_slacks(slack: FakeSlackApi) -> None:
    assert slack.base_url.startswith("http://127.0.0.1:")
    assert slack.base_url.endswith("/api/")


def test_post_and_update_round_trip(slack: FakeSlackApi, client: WebClient) -> None:
    root = client.chat_postMessage(channel="C0IMAGES", text="queued", metadata=None)
    assert root["ok"] is True
    assert root["channel"] == "C0IMAGES"
    assert root["message"]["text"] == "queued"
    reply = client.chat_postMessage(channel="C0IMAGES", text="step 1 done", thread_ts=root["ts"])
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*SUCCESS*"}}]
    updated = client.chat_update(channel="C0IMAGES", ts=root["ts"], text="success", blocks=blocks)

    assert updated["ts"] == root["ts"]
    assert updated["text"] == "success"
    assert float(reply["ts"]) > float(root["ts"])
    assert root["ts"] == "1700000000.000100"

    post, reply_call = slack.calls("chat.postMessage")
    assert post.args == {"channel": "C0IMAGES", "text": "queued"}
    assert reply_call.args["thread_ts"] == root["ts"]
    assert post.token == "xoxb-test"
    assert post.headers["authorization"] == "Bearer xoxb-test"
    (update,) = slack.calls("chat.update")
    assert update.args["blocks"] == blocks
    assert [c.method for c in slack.calls()] == [
        "chat.postMessage",
        "chat.postMessage",
        "chat.update",
    ]

    messages = slack.messages("C0IMAGES")
    assert list(messages) == [root["ts"], reply["ts"]]
    assert messages[root["ts"]].text == "success"
    assert messages[root["ts"]].blocks == blocks
    assert messages[root["ts"]].edits == 1
    assert messages[root["ts"]].thread_ts is None
    assert messages[reply["ts"]].thread_ts == root["ts"]
    assert [m.ts for m in slack.thread("C0IMAGES", root["ts"])] == [root["ts"], reply["ts"]]
    assert slack.messages("C0OTHER") == {}


def test_form_encoded_calls_decode_json_arguments(slack: FakeSlackApi, client: WebClient) -> None:
    blocks = [{"type": "divider"}]
    client.api_call(
        "chat.postMessage", data={"channel": "C1", "text": "t", "blocks": json.dumps(blocks)}
    )
    (call,) = slack.calls("chat.postMessage")
    assert call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert call.args == {"channel": "C1", "text": "t", "blocks": blocks}


def test_update_of_unknown_message_fails(slack: FakeSlackApi, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C1", text="x")
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1699999999.000001", text="y")
    assert err.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError):
        client.chat_update(channel="C2", ts=posted["ts"], text="y")  # right ts, wrong channel
    assert slack.messages()[posted["ts"]].text == "x"


def test_post_message_validates_like_slack(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        # Raw call: WebClient's helper would warn about the missing text first.
        client.api_call("chat.postMessage", json={"channel": "C1"})
    assert err.value.response["error"] == "no_text"


def test_rate_limit_surfaces_with_retry_after(slack: FakeSlackApi, client: WebClient) -> None:
    slack.fail_next(1, status=429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="hello")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert err.value.response["error"] == "ratelimited"

    (failed,) = slack.failed_calls("chat.postMessage")
    assert failed.status == 429
    assert failed.args == {"channel": "C1", "text": "hello"}
    assert slack.calls() == []

    client.chat_postMessage(channel="C1", text="hello")  # the fault was used up
    assert len(slack.calls("chat.postMessage")) == 1


def test_retrying_client_delivers_exactly_once(slack: FakeSlackApi) -> None:
    slack.fail_next(1, status=429, retry_after=0)
    retrying = WebClient(
        token="xoxb-test",
        base_url=slack.base_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=3)],
    )
    retrying.chat_postMessage(channel="C1", text="once")
    assert len(slack.failed_calls("chat.postMessage")) == 1
    assert len(slack.calls("chat.postMessage")) == 1
    assert len(slack.messages("C1")) == 1


def test_faults_can_target_one_method(slack: FakeSlackApi, client: WebClient) -> None:
    slack.fail_next(1, status=500, method="chat.update")
    posted = client.chat_postMessage(channel="C1", text="a")
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts=posted["ts"], text="b")
    assert err.value.response.status_code == 500
    client.chat_update(channel="C1", ts=posted["ts"], text="b")
    assert [c.method for c in slack.failed_calls()] == ["chat.update"]
    assert slack.messages()[posted["ts"]].text == "b"


def test_unauthenticated_calls_are_refused(slack: FakeSlackApi) -> None:
    with pytest.raises(SlackApiError) as err:
        WebClient(base_url=slack.base_url).chat_postMessage(channel="C1", text="x")
    assert err.value.response["error"] == "not_authed"
    with pytest.raises(SlackApiError) as err:
        WebClient(token="not-a-token", base_url=slack.base_url).auth_test()
    assert err.value.response["error"] == "invalid_auth"
    assert slack.messages() == {}
    assert [c.ok for c in slack.calls()] == [False, False]


def test_pinned_token_rejects_others() -> None:
    with FakeSlackApi(token="xoxb-right") as fake:
        assert WebClient(token="xoxb-right", base_url=fake.base_url).auth_test()["ok"]
        with pytest.raises(SlackApiError, match="invalid_auth"):
            WebClient(token="xoxb-wrong", base_url=fake.base_url).auth_test()


def test_unknown_method(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.api_call("nbenv.nonsense")
    assert err.value.response["error"] == "unknown_method"


def test_identity_and_users(slack: FakeSlackApi, client: WebClient) -> None:
    me = client.auth_test()
    assert {"url", "team", "user", "team_id", "user_id", "bot_id"} <= me.data.keys()
    slack.add_user("U01OWNER", "owner", "Olive Owner", email="olive@example.com")
    user = client.users_info(user="U01OWNER")["user"]
    assert (user["id"], user["name"], user["real_name"]) == ("U01OWNER", "owner", "Olive Owner")
    assert user["profile"]["email"] == "olive@example.com"
    assert client.users_info(user="U0SOMEONE")["user"]["id"] == "U0SOMEONE"
    with pytest.raises(SlackApiError, match="user_not_found"):
        client.users_info(user="nobody")


def test_ephemeral_permalink_and_replies(client: WebClient) -> None:
    eph = client.chat_postEphemeral(channel="C1", user="U1", text="refused")
    assert eph["message_ts"]
    root = client.chat_postMessage(channel="C1", text="root")
    reply = client.chat_postMessage(channel="C1", text="reply", thread_ts=root["ts"])
    link = client.chat_getPermalink(channel="C1", message_ts=reply["ts"])
    assert link["permalink"].startswith("https://")
    assert f"thread_ts={root['ts']}" in link["permalink"]
    replies = client.conversations_replies(channel="C1", ts=root["ts"])
    assert [m["text"] for m in replies["messages"]] == ["root", "reply"]


def test_views(slack: FakeSlackApi, client: WebClient) -> None:
    home = {"type": "home", "blocks": [{"type": "divider"}]}
    published = client.views_publish(user_id="U1", view=home)["view"]
    assert published["type"] == "home"
    assert slack.home_view("U1") == published

    modal = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Promote"},
        "blocks": [{"type": "divider"}],
    }
    opened = client.views_open(trigger_id="123.456", view=modal)["view"]
    changed = client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal)["view"]
    assert changed["id"] == opened["id"]
    with pytest.raises(SlackApiError, match="hash_conflict"):
        client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal)
    with pytest.raises(SlackApiError, match="not_found"):
        client.views_update(view_id="V404", view=modal)
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        client.views_open(trigger_id="", view=modal)


def test_response_urls(slack: FakeSlackApi) -> None:
    url = slack.response_url("cmd-1")
    reply = WebhookClient(url).send(text="working on it", response_type="ephemeral")
    assert (reply.status_code, reply.body) == (200, "ok")
    (call,) = slack.calls("response_url:/response/cmd-1")
    assert call.args == {"text": "working on it", "response_type": "ephemeral"}

    request = urllib.request.Request(url, data=b"{not json", method="POST")
    request.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 400
    assert len(slack.calls()) == 1


def test_response_url_faults_are_opt_in(slack: FakeSlackApi, client: WebClient) -> None:
    slack.fail_next(1, status=503)  # API only
    assert WebhookClient(slack.response_url("a")).send(text="x").status_code == 200
    slack.fail_next(1, status=503, method="response_url")
    assert WebhookClient(slack.response_url("a")).send(text="x").status_code == 503
    with pytest.raises(SlackApiError):
        client.auth_test()  # the first, unqualified fault is still pending for the API


def test_override_answers_a_method(slack: FakeSlackApi, client: WebClient) -> None:
    slack.override("users.info", {"ok": False, "error": "user_not_visible"})
    with pytest.raises(SlackApiError, match="user_not_visible"):
        client.users_info(user="U01TESTER")
    slack.override("users.info", None)
    assert client.users_info(user="U01TESTER")["ok"]


def test_concurrent_posts_get_unique_increasing_ts(slack: FakeSlackApi) -> None:
    def post(i: int) -> str:
        c = WebClient(token="xoxb-test", base_url=slack.base_url)
        return str(c.chat_postMessage(channel="C1", text=str(i))["ts"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        stamps = list(pool.map(post, range(40)))
    assert len(set(stamps)) == 40
    recorded = [c.response["ts"] for c in slack.calls() if c.response]
    assert recorded == sorted(recorded, key=float)
    assert len(slack.messages("C1")) == 40


def test_wait_for_sees_calls_from_other_threads(slack: FakeSlackApi, client: WebClient) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(client.chat_postMessage, channel="C1", text="later")
        (call,) = slack.wait_for("chat.postMessage", timeout=5)
    assert call.args["text"] == "later"
    with pytest.raises(TimeoutError, match=r"0/1 chat\.update"):
        slack.wait_for("chat.update", timeout=0.1)


def test_reset_forgets_state_but_keeps_ts_unique(slack: FakeSlackApi, client: WebClient) -> None:
    first = client.chat_postMessage(channel="C1", text="a")["ts"]
    slack.fail_next(5)
    slack.reset()
    assert slack.calls() == [] and slack.messages() == {}
    second = client.chat_postMessage(channel="C1", text="b")["ts"]
    assert float(second) > float(first)


def test_bolt_app_starts_against_the_fake(slack: FakeSlackApi) -> None:
    from slack_bolt import App

    # Bolt verifies its token with auth.test on construction; this must just work.
    app = App(client=WebClient(token="xoxb-test", base_url=slack.base_url), signing_secret="secret")
    assert app.client.base_url == slack.base_url
    assert [c.method for c in slack.calls()] == ["auth.test"]


def test_fake_slack_refuses_views_and_blocks_slack_refuses() -> None:
    """Shaped on Slack's reference (api.slack.com/reference/surfaces/views and
    /reference/block-kit/blocks): at most 100 blocks in a view, 24 characters of a modal
    title, and whatever slack_sdk's own Block Kit validators refuse."""
    divider = {"type": "divider"}
    with FakeSlackApi() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        with pytest.raises(SlackApiError) as refused:
            client.views_publish(user_id="U1", view={"type": "home", "blocks": [divider] * 101})
        assert refused.value.response["error"] == "invalid_arguments"
        assert client.views_publish(user_id="U1", view={"type": "home", "blocks": [divider] * 100})[
            "ok"
        ]
        title = {"type": "plain_text", "text": "Reject a version, please!"}  # 25 characters
        modal = {"type": "modal", "title": title, "blocks": [divider]}
        with pytest.raises(SlackApiError) as refused:
            client.views_open(trigger_id="t1", view=modal)
        assert refused.value.response["error"] == "invalid_arguments"
        modal["title"] = {**title, "text": title["text"][:24]}
        assert client.views_open(trigger_id="t1", view=modal)["ok"]
        # Over a limit only slack_sdk's validators know: an action_id over 255 characters.
        button = {
            "type": "button",
            "action_id": "a" * 256,
            "text": {"type": "plain_text", "text": "Go"},
        }
        for blocks in ([{"type": "actions", "elements": [button]}], [{"type": "nonsense"}]):
            with pytest.raises(SlackApiError) as refused:
                client.chat_postMessage(channel="C1", text="t", blocks=blocks)
            assert refused.value.response["error"] == "invalid_blocks"
