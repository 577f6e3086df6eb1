"""What a newcomer meets at the command line: help that runs nothing and needs no
identity, an answer free of log lines, output that ends quietly in `| head`, and a
README that tells how to reach `nbenv` and names its own sections correctly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from bot.cli import PROGRAMS
from bot.domain.command_table import COMMANDS, USAGE
from tests.conftest import IMAGE, OWNER, TEST_CONFIG
from tests.slack.bot import report, sha

ROOT = Path(__file__).parents[2]
SUBCOMMANDS = sorted(PROGRAMS) + sorted(USAGE)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "nbenv.yaml"
    path.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    return path


def _env(tmp_path: Path, config: Path) -> dict[str, str]:
    """No identity, no Slack secrets; the store and $NBENV_HOME inside tmp_path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NBENV_USER", "SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN")
    }
    env.update(
        NBENV_CONFIG=str(config),
        NBENV_DATABASE_URL=f"sqlite:///{tmp_path / 'nbenv.db'}",
        NBENV_HOME=str(tmp_path / "home"),
    )
    return env


def _nbenv(
    args: list[str], env: dict[str, str], stdout: int = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,  # `worker --help` once started a worker that never stopped
    )


def _left_behind(tmp_path: Path, config: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p != config)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["help"],
        ["--help"],
        ["-h"],
        *([name, "--help"] for name in SUBCOMMANDS),
        ["help", "worker"],
        ["help", "promote"],
        ["promote", IMAGE, "--force", "-h"],
        ["--as", OWNER, "recover", "--help"],
    ],
    ids=lambda args: " ".join(args) or "(nothing)",
)
def test_help_needs_no_identity_and_runs_nothing(
    tmp_path: Path, config: Path, args: list[str]
) -> None:
    result = _nbenv(args, _env(tmp_path, config))

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: nbenv")
    topic = next((word for word in args if word in SUBCOMMANDS and word != "help"), None)
    if topic:
        assert f"nbenv {topic}" in result.stdout or f"] {topic}" in result.stdout
    # Nothing ran: no store was made, no worker started, $NBENV_HOME was not created.
    assert _left_behind(tmp_path, config) == []


def test_the_overview_lists_every_slash_command_and_program(tmp_path: Path, config: Path) -> None:
    env = _env(tmp_path, config)
    overview = _nbenv(["--help"], env).stdout

    for name, usage in USAGE.items():
        assert usage in overview or name == "help"
        assert COMMANDS[name].summary in overview
    for name in ("promote IMAGE", "rollback IMAGE", "reject IMAGE [SHA] REASON"):
        assert name in overview
    for program in PROGRAMS:
        assert re.search(rf"^  {re.escape(program)} ", overview, re.MULTILINE), program
    assert _nbenv(["help"], env).stdout == overview


def test_version_comes_from_the_package_metadata(tmp_path: Path, config: Path) -> None:
    result = _nbenv(["--version"], _env(tmp_path, config))

    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"nbenv {version('nbenv')}\n",
        "",
    )
    assert _left_behind(tmp_path, config) == []


def test_help_for_an_unknown_command_is_one_line(tmp_path: Path, config: Path) -> None:
    result = _nbenv(["frobnicate", "--help"], _env(tmp_path, config))

    assert result.returncode == 2
    assert result.stderr == "nbenv: unknown command 'frobnicate': `nbenv --help` lists them\n"


PUBLISHED = 250  # versions: an audit export of ~125 kB, more than a pipe holds (64 kB)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A store with many versions published (history, status and audit to print); the
    tests that use it only read it."""
    from bot.bootstrap import build_runtime

    folder = tmp_path_factory.mktemp("published")
    config = folder / "nbenv.yaml"
    config.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    env = _env(folder, config)
    runtime = build_runtime(str(config), env["NBENV_DATABASE_URL"])
    for number in range(PUBLISHED):
        runtime.nbenv.publish(OWNER, IMAGE, sha(IMAGE, f"v{number}"), report=report())
    runtime.store.engine.dispose()
    return env


@pytest.mark.parametrize(
    "args",
    [
        ["--as", OWNER, "history", IMAGE],
        ["--as", OWNER, "status", "--json"],
        ["--as", OWNER, "versions", IMAGE, "--json"],
        ["audit", "export"],
        ["audit", "export", "--format", "csv"],
        ["--help"],
    ],
    ids=" ".join,
)
def test_output_into_a_reader_that_has_left_ends_quietly(
    published: dict[str, str], args: list[str]
) -> None:
    # The read end is closed before nbenv starts: its very first write finds no reader,
    # as when `| head -1` has had its line and gone.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = _nbenv(args, published, stdout=write_end)
    finally:
        os.close(write_end)

    assert (result.returncode, result.stderr) == (0, "")


def test_a_big_export_piped_into_head_ends_quietly(published: dict[str, str]) -> None:
    """`nbenv audit export | head -1`: head leaves while nbenv still has lines to write."""
    nbenv = subprocess.Popen(
        [sys.executable, "-m", "bot", "audit", "export"],
        env=published,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    head = subprocess.run(["head", "-n", "1"], stdin=nbenv.stdout, capture_output=True, text=True)
    nbenv.stdout.close()  # type: ignore[union-attr]
    _, errors = nbenv.communicate(timeout=60)

    assert json.loads(head.stdout)["seq"] == 1
    assert (nbenv.returncode, errors) == (0, "")


def test_a_failed_build_answers_with_its_reason_and_no_log_line(
    tmp_path: Path, config: Path
) -> None:
    env = _env(tmp_path, config)

    failed = _nbenv(["--as", OWNER, "build", IMAGE, "no-such-ref"], env)

    assert failed.returncode == 1
    assert failed.stdout.startswith(f"🏗 build of {IMAGE} at `no-such-ref` queued")
    assert "WARNING" not in failed.stdout + failed.stderr
    (reason,) = failed.stderr.splitlines()
    assert reason.startswith("nbenv: build failed: ") and "is not a git repository" in reason
    # The log keeps what the answer leaves out; -v prints it on stderr as well.
    log = (tmp_path / "home" / "nbenv.log").read_text(encoding="utf-8")
    assert "WARNING bot.service.jobs: job 1 (build) refused:" in log
    verbose = _nbenv(["-v", "--as", OWNER, "build", IMAGE, "no-such-ref"], env)
    assert "WARNING bot.service.jobs: job 2 (build) refused:" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == reason


def test_the_readme_says_how_to_run_nbenv_after_the_quickstart() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]

    assert ".venv/bin/nbenv" in quickstart
    assert ". .venv/bin/activate" in quickstart


def test_the_config_points_at_readme_sections_that_exist() -> None:
    headings = {
        line.lstrip("#").strip()
        for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for path in (ROOT / "config").glob("*.yaml"):
        for section in re.findall(r'README, "([^"]+)"', path.read_text(encoding="utf-8")):
            assert section in headings, f"{path.name} points at README section {section!r}"
