"""Bad input gets one clear line, a non-zero exit, and changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import load_config
from bot.domain.commands import MAX_REASON
from bot.domain.errors import ConfigError
from bot.domain.policy import Role
from tests.conftest import IMAGE, OWNER, STRANGER, TEST_CONFIG, TESTER, USER, sha_of


@pytest.fixture
def cli(config_file: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("NBENV_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("NBENV_CONFIG", str(config_file))

    def run(*words: str) -> tuple[int, str, str]:
        code = main(list(words))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _status(cli) -> dict:
    code, out, _ = cli("--as", OWNER, "status", IMAGE, "--json")
    assert code == 0
    return json.loads(out)


def _audit_size(cli) -> int:
    _code, out, _ = cli("audit", "export")
    return len(out.splitlines())


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["status", "nope.image"], "unknown image 'nope.image'"),
        (["status", "NLP.Keras"], "not a valid image name"),
        (["status", "nlp..keras"], "not a valid image name"),
        (["status", "x" * 129], "at most 128"),
        (["approve", IMAGE, "xyz1234"], "not a commit SHA"),
        (["approve", IMAGE, "abc12"], "7 to 40 hexadecimal digits"),
        (["publish", IMAGE, "1234567"], "expected 40 hexadecimal digits"),
        (["history", IMAGE, "g" * 40], "not a commit SHA"),
        (["rollback", IMAGE, "--to"], "--to needs a value"),
        (["promote", IMAGE, "--bogus"], "unknown option --bogus"),
        (["promote"], "missing IMAGE"),
        (["frobnicate", IMAGE], "unknown command 'frobnicate'"),
        (["instance", IMAGE, "--env", "qa"], "unknown environment 'qa'"),
        (["instance", IMAGE, "--name", "Bad_Name"], "not a valid instance name"),
        (["reject", IMAGE], "reject needs a REASON"),
        (["freeze", IMAGE], "freeze needs a REASON"),
    ],
)
def test_bad_input_is_one_clear_line_and_changes_nothing(cli, words, message):
    before = (_status(cli), _audit_size(cli))
    code, out, err = cli("--as", OWNER, *words)
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert (_status(cli), _audit_size(cli)) == before


def test_unknown_and_malformed_users(cli):
    code, _, err = cli("--as", STRANGER, "status")
    assert code == 2 and "unknown user U09STRANGER" in err
    code, _, err = cli("--as", "alice", "status")
    assert code == 2 and "not a Slack user ID" in err


@pytest.fixture
def cli_on_both(config_file: Path, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys):
    """`cli` on SQLite and on PostgreSQL."""
    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    monkeypatch.setenv("NBENV_CONFIG", str(config_file))
    monkeypatch.delenv("NBENV_USER", raising=False)

    def run(*words: str) -> tuple[int, str, str]:
        code = main(list(words))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_no_one_acts_as_the_pipeline_with_as_or_nbenv_user(cli_on_both, monkeypatch):
    cli = cli_on_both
    assert cli("--as", OWNER, "publish", IMAGE, sha_of("a"))[0] == 0
    before = (_status(cli), _audit_size(cli))
    for words in (
        ["--as", "build:evil", "freeze", IMAGE, "takeover"],
        ["--as", "build:x", "approve", IMAGE],
        ["--as", "build:evil", "promote", IMAGE, "--yes"],
        ["--as", "build:evil", "publish", IMAGE, sha_of("b")],
    ):
        code, out, err = cli(*words)
        assert (code, out) == (2, "")
        assert err == f"nbenv: --as: {words[1]!r} is not a Slack user ID (like U01ABCDEF)\n"
    monkeypatch.setenv("NBENV_USER", "build:evil")
    code, _, err = cli("freeze", IMAGE, "takeover")
    assert code == 2
    assert err == "nbenv: NBENV_USER: 'build:evil' is not a Slack user ID (like U01ABCDEF)\n"
    assert (_status(cli), _audit_size(cli)) == before


def test_the_pipeline_publishes_through_publish_build_id(cli_on_both):
    cli = cli_on_both
    code, _, err = cli("publish", IMAGE, sha_of("a"), "--build-id", "b-123")
    assert code == 0, err
    staging = _status(cli)["environments"]["staging"]
    assert (staging["sha"], staging["updated_by"]) == (sha_of("a"), "build:b-123")
    before = (_status(cli), _audit_size(cli))
    code, _, err = cli("--as", OWNER, "publish", IMAGE, sha_of("b"), "--build-id", "b-124")
    assert code == 2 and "not both" in err
    code, _, err = cli("publish", IMAGE, sha_of("b"), "--build-id", "b 124; rm")
    assert code == 2 and "is not a build ID" in err
    assert len(err.strip().splitlines()) == 1
    assert (_status(cli), _audit_size(cli)) == before


def test_missing_user_is_explained(cli, monkeypatch):
    monkeypatch.delenv("NBENV_USER", raising=False)
    code, _, err = cli("status")
    assert code == 2 and "--as USER" in err


def test_refusal_exit_code_and_one_line(cli):
    cli("--as", OWNER, "publish", IMAGE, sha_of("a"))
    code, _out, err = cli("--as", USER, "promote", IMAGE)
    assert code == 3
    assert err.strip() == (
        "nbenv: promote on nlp.keras-batch needs the owner role in team nlp; you are a user"
    )


def test_nbenv_user_env_and_json_contracts(cli, monkeypatch):
    monkeypatch.setenv("NBENV_USER", OWNER)
    assert cli("publish", IMAGE, sha_of("a"))[0] == 0
    monkeypatch.setenv("NBENV_USER", TESTER)
    assert cli("approve", IMAGE)[0] == 0
    code, out, _ = cli("--as", OWNER, "promote", IMAGE, "--dry-run")
    assert code == 0 and "would promote" in out
    status = _status(cli)
    assert set(status) >= {"image", "environments", "frozen"}
    assert status["environments"]["staging"]["sha"] == sha_of("a")
    assert status["environments"]["production"] is None
    code, out, _ = cli("--as", USER, "status", "--json")
    assert next(item["image"] for item in json.loads(out)) == IMAGE
    code, out, _ = cli("--as", USER, "versions", IMAGE, "--json")
    assert json.loads(out)["items"][0]["sha"] == sha_of("a")
    code, out, _ = cli("--as", USER, "history", IMAGE, "--json")
    page = json.loads(out)  # newest first, and where the next page starts
    assert [e["action"] for e in page["items"]] == ["approve", "publish"]
    assert (page["more"], page["next"]) == (0, None)


def test_console_script_and_python_m_bot_agree(config_file, sqlite_url, tmp_path):
    env = {
        "NBENV_CONFIG": str(config_file),
        "NBENV_DATABASE_URL": sqlite_url,
        "NBENV_HOME": str(tmp_path),
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
    }
    a = subprocess.run(
        [sys.executable, "-m", "bot", "--as", OWNER, "status", IMAGE, "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    b = subprocess.run(
        ["nbenv", "--as", OWNER, "status", IMAGE, "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["image"] == IMAGE


# -- config files --------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _twice(key_line: str, again: str) -> Callable[[str], str]:
    return lambda c: c.replace(key_line, key_line + again, 1)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (
            lambda c: c.replace(
                "team: nlp\n    channel: C01NLP\n    approvals: 1",
                "team: nlpx\n    channel: C01NLP\n    approvals: 1",
            ),
            "14: images.nlp.keras-batch.team: no team 'nlpx'",
        ),
        (
            lambda c: c.replace("approvals: 2", "approvals: 0"),
            "20: images.nlp.two-approvals.approvals: Input should be greater than or equal to 1",
        ),
        (
            lambda c: c.replace("owners: [U01OWNER]", "owners: [bob]"),
            "5: teams.nlp.owners[0]: 'bob' is not a Slack user ID",
        ),
        (lambda c: c.replace("nlp.self-approve:", "NLP.Self:"), "21: images.NLP.Self: 'NLP.Self'"),
        (
            lambda c: c.replace("channel: C02VISION", "channel: vision"),
            "27: images.vision.pytorch-gpu.channel: expected a Slack channel ID",
        ),
        (
            # Slack's conversations.* methods need the ID: a #name is refused at load.
            lambda c: c.replace("channel: C02VISION", 'channel: "#vision"'),
            "27: images.vision.pytorch-gpu.channel: expected a Slack channel ID like "
            "C0123ABCD, not '#vision': in Slack, open the channel's details",
        ),
        (lambda c: c.replace("backend: local", "backend: aws"), "2: backend: Input should be"),
        (
            lambda c: c.replace("backend: local", "backend: gcp"),
            "2: gcp: required when backend is gcp",
        ),
        (lambda c: c + "\nsurprise: 1\n", "29: surprise: Extra inputs are not permitted"),
        # A key given twice: YAML would keep the second silently (here: demote the owner).
        (
            _twice("    owners: [U01OWNER]\n", "    owners: [U09INTRUDER]\n"),
            "6: teams.nlp.owners: given twice (first on line 5)",
        ),
        (lambda c: c + "backend: gcp\n", "28: backend: given twice (first on line 2)"),
        (
            _twice("    approvals: 2\n", "    approvals: 1\n"),
            "21: images.nlp.two-approvals.approvals: given twice (first on line 20)",
        ),
        # One role per person and team; "*" only for users.
        (
            lambda c: c.replace(
                "testers: [U02TESTER, U03TESTER]", "testers: [U03TESTER, U01OWNER]"
            ),
            "6: teams.nlp.testers[1]: U01OWNER is also listed in owners",
        ),
        (
            lambda c: c.replace("users: [U06USER]", "users: [U06USER, U02TESTER]"),
            "7: teams.nlp.users[1]: U02TESTER is also listed in testers",
        ),
        (
            lambda c: c.replace("owners: [U01OWNER]", 'owners: [U01OWNER, "*"]'),
            '5: teams.nlp.owners[1]: "*" (everyone) may only be listed in users',
        ),
        (
            lambda c: c.replace("testers: [U05VTESTER]", 'testers: ["*"]'),
            '10: teams.vision.testers[0]: "*" (everyone) may only be listed in users',
        ),
        (lambda c: "teams: [", "1:9: not valid YAML: "),
        (
            lambda c: c.replace("  nlp:\n", "  nlp: [\n", 1),
            "6:5: not valid YAML: while parsing a flow sequence (line 4)",
        ),
        (lambda c: c + "\x07\n", "28:1: not valid YAML: character #x0007 is not allowed"),
    ],
)
def test_invalid_config_names_file_line_key_and_problem(tmp_path, mutate, where):
    path = _write(tmp_path, mutate(textwrap.dedent(TEST_CONFIG)))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.message.startswith(f"{path}:{where}")
    assert "(top level)" not in error.value.message
    assert len(error.value.message.splitlines()) == 1


def test_users_may_be_everyone(tmp_path):
    path = _write(tmp_path, textwrap.dedent(TEST_CONFIG).replace("[U07ANALYST]", '["*"]'))
    assert load_config(path).role_of("vision.pytorch-gpu", STRANGER) == Role.USER


def test_invalid_config_stops_the_cli_with_one_line(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path, textwrap.dedent(TEST_CONFIG).replace("approvals: 2", "approvals: -1"))
    code = main(["--config", str(path), "--as", OWNER, "status"])
    err = capsys.readouterr().err
    assert code == 78
    assert err.startswith(f"nbenv: {path}:20: images.nlp.two-approvals.approvals: ")
    assert len(err.splitlines()) == 1


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    text = textwrap.dedent(TEST_CONFIG).replace("team: nlp", "team: nlp  # équipe", 1)
    path.write_bytes(text.encode("latin-1"))

    with pytest.raises(ConfigError) as error:
        load_config(path)
    code = main(["--config", str(path), "--as", OWNER, "status"])

    expected = f"{path}:14: not UTF-8 text (byte 0xe9): save the config file as UTF-8"
    assert error.value.message == expected
    assert (code, capsys.readouterr().err) == (78, f"nbenv: {expected}\n")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_example_config_is_valid():
    config = load_config(Path(__file__).parents[2] / "config" / "nbenv.yaml")
    assert "nlp.keras-batch" in config.images
    assert len(config.teams) >= 2 and len(config.images) >= 3


def test_the_cli_takes_its_words_as_the_shell_cut_them(cli):
    """`nbenv … --reason "'…'"`: the arguments are words already. Their quote marks are
    text, counted once, not quoted again (five characters for each ') to be cut again:
    a reason of the allowed length is accepted whatever it holds."""
    reason = "'" * MAX_REASON

    code, _, err = cli("--as", OWNER, "freeze", IMAGE, "--reason", reason)

    assert (code, err) == (0, "")
    assert _status(cli)["freeze"]["reason"] == reason
    # Too long is said of the reason as typed, not of a text the CLI made of it.
    code, _, err = cli("--as", OWNER, "freeze", IMAGE, "--reason", "'" * (MAX_REASON + 1))
    assert (code, err) == (
        2,
        f"nbenv: the reason is {MAX_REASON + 1:,} characters long: at most {MAX_REASON:,}, "
        "please shorten it\n",
    )


def test_the_cli_pages_versions_and_history_with_limit_and_before(cli_on_both) -> None:
    cli = cli_on_both
    for label in ("a", "b", "c"):
        assert cli("--as", OWNER, "publish", IMAGE, sha_of(label))[0] == 0

    code, out, _ = cli("--as", USER, "versions", IMAGE, "--limit", "2", "--json")
    first = json.loads(out)
    assert code == 0 and len(first["items"]) == 2 and first["more"] == 1
    code, out, _ = cli("--as", USER, "versions", IMAGE, "--before", first["next"], "--json")
    second = json.loads(out)
    assert [v["sha"] for v in first["items"] + second["items"]] == [
        sha_of(label) for label in ("c", "b", "a")
    ]
    assert (second["more"], second["next"]) == (0, None)

    code, out, _ = cli("--as", USER, "history", IMAGE, "--limit", "1")
    assert code == 0 and "publish" in out and "2 older: `/nbenv history" in out
    code, _, err = cli("--as", USER, "history", IMAGE, "--limit", "1000")
    assert code == 2 and "1 to 100" in err and "Traceback" not in err
