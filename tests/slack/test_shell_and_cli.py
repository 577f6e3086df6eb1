"""`nbenv shell` driven through stdin, and the start-up errors of `nbenv serve` and
`nbenv socket` (Socket Mode itself, end to end: tests/slack/test_socket_mode.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import IMAGE, OWNER, TEST_CONFIG, TESTER, USER
from tests.slack.bot import SECRET, BotServer, report, sha
from tests.support.slack_api import FakeSlackApi


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "nbenv.yaml"
    path.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    return path


def _env(tmp_path: Path, config: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN")
    }
    env.update(
        NBENV_CONFIG=str(config),
        NBENV_DATABASE_URL=f"sqlite:///{tmp_path / 'nbenv.db'}",
        NBENV_HOME=str(tmp_path / "home"),
        **extra,
    )
    return env


def _run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


SCRIPT = f"""\
# a tester tries the version in staging, an owner promotes it
/nbenv status {IMAGE}
/as {TESTER}
Approve
/as {USER}
Reject
/as {TESTER}
Reject
/cancel
/as {OWNER}
Promote
Promote to production
/nbenv history {IMAGE}
/home
/nbenv frobnicate
Frobnicate
/as not-a-user
/nbenv rollback {IMAGE}
"""


def test_the_shell_runs_a_whole_approval_and_promotion_from_stdin(
    tmp_path: Path, config: Path
) -> None:
    env = _env(tmp_path, config)
    commit = sha(IMAGE, "v1")
    report_file = tmp_path / "report.json"
    report_file.write_text(json.dumps(report()), encoding="utf-8")
    published = _run(["--as", OWNER, "publish", IMAGE, commit, "--report", str(report_file)], env)
    assert published.returncode == 0, published.stderr

    result = _run(["--as", OWNER, "shell"], env, SCRIPT)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    short = commit[:7]
    # What was queued before the shell started is shown first, as the channel would.
    assert out.index(f"#C01NLP (1) 🧪 `{short}` is now in staging") < out.index("U01OWNER> ")
    assert f"U01OWNER> /nbenv status {IMAGE}" in out
    assert f"(only you) *{IMAGE}*" in out
    assert f"#C01NLP (1) ↳ ✅ @{TESTER} approved `{short}`" in out
    assert f"(only you) ⚠️ reject on {IMAGE} needs the tester role" in out
    assert f"(dialog) Reject `{short}` of *{IMAGE}*?" in out
    assert "(dialog closed: nothing was changed)" in out
    assert f"production: `—` → `{short}`" in out
    assert f"(only you (replaces the message above)) 🚀 @{OWNER} promoted `{short}`" in out
    assert f"#C01NLP (1) ↳ 🚀 @{OWNER} promoted `{short}` to production of {IMAGE}" in out
    assert "History of" in out and "@U01OWNER promote" in out
    assert "(App Home) nbenv — notebook images" in out
    assert "⚠️ unknown command 'frobnicate'" in out
    assert "no 'Frobnicate' button is shown yet; buttons shown: [Approve] [Reject]" in out
    assert "not understood" not in out
    assert "⚠️ 'not-a-user' is not a Slack user ID" in out
    assert "has nothing in production to roll back" not in out
    assert f"{IMAGE} has no fallback" in out

    status = _run(["--as", USER, "status", IMAGE, "--json"], env)
    assert json.loads(status.stdout)["environments"]["production"]["sha"] == commit


def test_a_button_not_shown_yet_is_named_as_such(tmp_path: Path, config: Path) -> None:
    env = _env(tmp_path, config)
    before = _run(["--as", OWNER, "shell"], env, "Approve\n/frobnicate\n")
    published = _run(["--as", OWNER, "publish", IMAGE, sha(IMAGE, "v1")], env)
    assert published.returncode == 0, published.stderr

    after = _run(["--as", OWNER, "shell"], env, "Promote\n")

    assert (before.returncode, after.returncode) == (0, 0), before.stderr + after.stderr
    assert "no 'Approve' button is shown yet: no buttons so far (type /help)" in before.stdout
    assert "not understood: '/frobnicate' (type /help)" in before.stdout
    # The version published shows its Approve and Reject buttons in the channel.
    assert "no 'Promote' button is shown yet; buttons shown: [Approve] [Reject]" in after.stdout
    assert "not understood" not in after.stdout


def test_the_shell_refuses_an_identity_that_is_no_slack_user(tmp_path: Path, config: Path) -> None:
    env = _env(tmp_path, config, NBENV_USER="build:evil")
    takeover = f"/nbenv freeze {IMAGE} takeover\n/nbenv status {IMAGE}\n"

    by_option = _run(["--as", "build:evil", "shell"], env, stdin=takeover)
    by_env = _run(["shell"], env, stdin=takeover)

    assert by_option.returncode == by_env.returncode == 2
    assert by_option.stderr == "nbenv: --as: 'build:evil' is not a Slack user ID (like U01ABCDEF)\n"
    assert (
        by_env.stderr == "nbenv: NBENV_USER: 'build:evil' is not a Slack user ID (like U01ABCDEF)\n"
    )
    assert by_option.stdout == by_env.stdout == ""


def test_serve_refuses_to_start_without_its_secrets(tmp_path: Path, config: Path) -> None:
    no_secret = _run(["serve"], _env(tmp_path, config, SLACK_BOT_TOKEN="xoxb-test"))
    no_token = _run(["serve"], _env(tmp_path, config, SLACK_SIGNING_SECRET=SECRET))

    assert no_secret.returncode == 2
    assert "SLACK_SIGNING_SECRET is not set" in no_secret.stderr
    assert no_token.returncode == 2
    assert "SLACK_BOT_TOKEN is not set" in no_token.stderr
    assert len(no_secret.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"teams: {nlp: {owners: [nobody]}}\nimages: {}\n", "1: teams.nlp.owners[0]: 'nobody'"),
        # A second `owners:` would silently replace the first.
        (
            b"teams:\n  nlp:\n    owners: [U01OWNER]\n    owners: [U09OTHER]\n"
            b"images: {nlp.a: {team: nlp, channel: C01}}\n",
            "4: teams.nlp.owners: given twice (first on line 3)",
        ),
        (
            b"# \xe9quipe nlp\nteams: {nlp: {owners: [U01OWNER]}}\n",
            "1: not UTF-8 text (byte 0xe9)",
        ),
    ],
    ids=["bad user", "duplicate key", "not utf-8"],
)
def test_serve_refuses_a_bad_config_in_one_line(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    env = _env(tmp_path, bad, SLACK_SIGNING_SECRET=SECRET, SLACK_BOT_TOKEN="xoxb-test")

    result = _run(["serve", "--port", "0"], env)

    assert result.returncode == 78
    assert result.stderr.startswith(f"nbenv: {bad}:{problem}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path, config: Path) -> None:
    with FakeSlackApi() as slack:
        server = BotServer(
            config=config,
            db_url=f"sqlite:///{tmp_path / 'nbenv.db'}",
            home=tmp_path / "home",
            slack=slack,
        ).start()
        assert server.slash(OWNER, "help").status == 200
        assert server.stop(graceful=True) == 0
    assert "Traceback" not in server.log.read_text()


@pytest.mark.parametrize(
    ("app_token", "expected"),
    [
        (None, "SLACK_APP_TOKEN is not set"),
        ("xoxb-not-an-app-token", "must be an app-level token (xapp-"),
    ],
)
def test_socket_mode_refuses_to_start_without_an_app_token(
    tmp_path: Path, config: Path, app_token: str | None, expected: str
) -> None:
    extra = {"SLACK_BOT_TOKEN": "xoxb-test"}
    if app_token:
        extra["SLACK_APP_TOKEN"] = app_token
    result = _run(["socket"], _env(tmp_path, config, **extra))
    assert result.returncode == 2
    assert expected in result.stderr


def test_socket_mode_needs_the_bot_token_too(tmp_path: Path, config: Path) -> None:
    result = _run(["socket"], _env(tmp_path, config, SLACK_APP_TOKEN="xapp-1-A-1-x"))
    assert result.returncode == 2
    assert "SLACK_BOT_TOKEN is not set" in result.stderr


def test_socket_mode_builds_the_same_app_over_the_websocket_adapter(
    tmp_path: Path, config: Path
) -> None:
    from bot.bootstrap import build_runtime
    from bot.slack.app import build_app
    from bot.slack.socket import socket_mode_handler

    runtime = build_runtime(str(config), f"sqlite:///{tmp_path / 'socket.db'}")
    bolt = build_app(runtime.nbenv, token="xoxb-test", signing_secret=None)
    handler = socket_mode_handler(bolt, "xapp-1-A0-1-test")
    try:
        assert handler.app is bolt
        assert handler.client.app_token == "xapp-1-A0-1-test"
    finally:
        handler.close()


def test_the_slack_manifest_points_everything_at_the_bot() -> None:
    import yaml

    manifest = yaml.safe_load(
        (Path(__file__).parents[2] / "config" / "slack-manifest.yaml").read_text("utf-8")
    )
    events_url = "https://YOUR-HOST/slack/events"
    (command,) = manifest["features"]["slash_commands"]
    assert (command["command"], command["url"]) == ("/nbenv", events_url)
    assert manifest["settings"]["interactivity"] == {"is_enabled": True, "request_url": events_url}
    assert manifest["settings"]["event_subscriptions"] == {
        "request_url": events_url,
        "bot_events": ["app_home_opened", "member_joined_channel"],
    }
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert {
        "commands",
        "chat:write",
        "channels:history",
        "groups:history",
    } <= set(manifest["oauth_config"]["scopes"]["bot"])
    # Posting without joining would leave channels whose history the bot cannot read, so
    # a message cut short by a crash could not be found there and would be sent twice.
    assert "chat:write.public" not in manifest["oauth_config"]["scopes"]["bot"]
