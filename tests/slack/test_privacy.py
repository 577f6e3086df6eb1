"""Privacy: an instance's access link (on the local backend it holds the Jupyter token,
so whoever has it runs code in that notebook) is shown to the person who asked for the
instance, and to nobody else: not to other users, testers or owners of the image, not in
history, not in a channel. Others see name, owner, environment, SHA and state.

Through the real entry points: signed Slack requests to `nbenv serve`, the CLI, and the
console adapter (`nbenv shell`) with a real local Jupyter instance.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends_local.test_instances import free_port_range, port_open
from tests.conftest import OWNER, TESTER, USER
from tests.slack.bot import (
    CHANNEL,
    BotServer,
    ask,
    blocks_text,
    config_text,
    in_production,
    report,
    wait_response,
)
from tests.support.gitrepo import ImageRepo, image_repo
from tests.support.slack_api import FakeSlackApi

TOKEN = "s3cr3t-jupyter-token-of-ana"
REAL = "nlp.real"  # an image with a real repository: instances of it really start


@pytest.fixture(scope="module")
def repo(workdir: Path) -> ImageRepo:
    return image_repo(workdir / "repo", image=REAL)


@pytest.fixture(scope="module")
def config_path(workdir: Path, repo: ImageRepo) -> Path:
    """The module's server: the usual images, and one with a repository (no Docker here,
    and the operator did not opt in to sharing such instances)."""
    low, high = free_port_range()
    path = workdir / "nbenv.yaml"
    path.write_text(
        config_text(
            f"  {REAL}:\n"
            "    team: nlp\n"
            f"    channel: {CHANNEL}\n"
            f"    source: {{repo: {repo.path}, staging_branch: staging, production_branch: main}}\n"
            "local:\n"
            f"  instances_port_range: [{low}, {high}]\n"
        ),
        encoding="utf-8",
    )
    return path


def anas_instance(rt: Any, image: str, sha: str) -> str:
    name = f"ana-{image.replace('.', '-')}"
    with rt.store.write() as tx:
        tx.instances.add(
            name=name,
            image=image,
            env="production",
            sha=sha,
            requested_by=USER,
            backend="local",
            url=f"http://127.0.0.1:8891/?token={TOKEN}",
            state="running",
            details={"port": 8891},
        )
    return name


def test_only_the_requester_sees_an_instances_link(
    server: BotServer, rt: Any, image: str, slack: FakeSlackApi
) -> None:
    (v1,) = in_production(rt, image, "v1")
    name = anas_instance(rt, image, v1)
    listed = f"`{name}` {image} production `{v1[:7]}` running by <@{USER}>"

    # Another user of the team, and the image's owner: what it is and whose, no link.
    for viewer in (TESTER, OWNER):
        shown = ask(server, slack, viewer, f"instances {image}")
        assert listed in shown
        assert TOKEN not in shown
        assert "127.0.0.1:8891" not in shown
    everything = ask(server, slack, TESTER, "instances")
    assert name in everything and TOKEN not in everything

    # The person who asked for it gets the link.
    mine = ask(server, slack, USER, f"instances {image}")
    assert f"{listed} http://127.0.0.1:8891/?token={TOKEN}" in mine

    # Nothing went to a channel.
    assert all(TOKEN not in m.text for m in slack.messages(CHANNEL).values())


def test_the_cli_shows_the_link_to_its_owner_only(
    server: BotServer, rt: Any, image: str, workdir: Path
) -> None:
    (v1,) = in_production(rt, image, "v1")
    name = anas_instance(rt, image, v1)
    env = server.env()

    def nbenv(user: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "bot", "--as", user, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    others = json.loads(nbenv(TESTER, "instances", image, "--json"))
    assert [(row["name"], row["requested_by"], row["sha"]) for row in others] == [(name, USER, v1)]
    assert "url" not in others[0]
    assert TOKEN not in json.dumps(others)
    assert TOKEN not in nbenv(OWNER, "instances", image)

    (own,) = json.loads(nbenv(USER, "instances", image, "--json"))
    assert own["url"] == f"http://127.0.0.1:8891/?token={TOKEN}"


def test_history_hides_the_links_older_versions_wrote_in_the_audit_log(
    server: BotServer, rt: Any, image: str
) -> None:
    (v1,) = in_production(rt, image, "v1")
    with rt.store.write() as tx:  # as nbenv recorded a ready instance before this fix
        tx.audit.append(
            actor=USER,
            action="instance-ready",
            image=image,
            sha=v1,
            details={"name": "old-box", "env": "production", "url": f"http://h/?token={TOKEN}"},
        )

    shown = subprocess.run(
        [sys.executable, "-m", "bot", "--as", TESTER, "history", image, "--json"],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    entries = json.loads(shown)["items"]
    (ready,) = [entry for entry in entries if entry["action"] == "instance-ready"]
    assert ready["details"] == {"name": "old-box", "env": "production"}
    assert TOKEN not in shown


def test_a_slack_user_gets_no_unisolated_instance_unless_the_operator_shares_them(
    server: BotServer, rt: Any, slack: FakeSlackApi, repo: ImageRepo
) -> None:
    rt.nbenv.publish(OWNER, REAL, repo.sha("initial"), report=report(True))
    rt.nbenv.handle(TESTER, f"approve {REAL}")
    rt.nbenv.handle(OWNER, f"promote {REAL}")
    url = slack.response_url("real-instance")

    ack = server.slash(USER, f"instance {REAL} --name ana-real", response_url=url)

    assert "creating instance `ana-real`" in ack.shown
    answer = blocks_text(wait_response(slack, url, timeout=60))
    with rt.store.read() as tx:
        started = tx.instances.get("ana-real")
    if started is not None:  # only when nothing refused it: leave no server behind
        rt.nbenv.backend.stop_instance("ana-real", started["details"])
    assert "instance failed" in answer
    assert "as the OS user of nbenv" in answer
    assert "local.shared_instances" in answer
    with rt.store.read() as tx:
        assert tx.instances.get("ana-real") is None
        (refused,) = [e for e in tx.audit.entries(image=REAL) if e.outcome == "refused"]
    assert (refused.actor, refused.action) == (USER, "instance")
    assert "local.shared_instances" in refused.details["reason"]


# -- the console adapter, with a real local instance ----------------------------------------


@pytest.fixture
def console_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    repo = image_repo(tmp_path / "repo", image=REAL)
    low, high = free_port_range()
    config = tmp_path / "console.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            backend: local
            local: {{instances_port_range: [{low}, {high}]}}
            teams:
              nlp: {{owners: [{OWNER}], testers: [{TESTER}], users: ["*"]}}
            images:
              {REAL}:
                team: nlp
                channel: {CHANNEL}
                source: {{repo: {repo.path}, staging_branch: staging, production_branch: main}}
            """
        ),
        encoding="utf-8",
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLACK_") and k != "NBENV_DATABASE_URL"
    }
    env.update(
        NBENV_CONFIG=str(config),
        NBENV_HOME=str(tmp_path / "home"),
        # No Docker engine listens here, wherever the tests run: the local-Python path.
        DOCKER_HOST=f"unix://{tmp_path / 'no-docker.sock'}",
    )
    from bot.bootstrap import build_runtime

    db_url = f"sqlite:///{tmp_path / 'home' / 'nbenv.db'}"
    env["NBENV_DATABASE_URL"] = db_url
    (tmp_path / "home").mkdir()
    runtime = build_runtime(str(config), db_url)
    runtime.nbenv.publish(
        OWNER, REAL, repo.sha("initial"), report={"python": "3", "packages": [], "notebooks": []}
    )
    runtime.nbenv.handle(TESTER, f"approve {REAL}")
    runtime.nbenv.handle(OWNER, f"promote {REAL}")
    yield env
    with runtime.store.read() as tx:
        rows = tx.instances.matching(image=REAL)
    backend = build_runtime(str(config), db_url, run_by_operator=True).nbenv.backend
    for row in rows:  # never leave a server behind
        if row["state"] == "running":
            backend.stop_instance(row["name"], row["details"])


def test_the_console_answers_the_link_privately_and_lists_it_to_its_owner_only(
    console_env: dict[str, str],
) -> None:
    stranger = "U0ANOTHERTEAM"  # a user of the image only through "*"
    script = "\n".join(
        [
            f"/as {USER}",
            f"/nbenv instance {REAL} --name ana-box",
            f"/as {stranger}",
            f"/nbenv instances {REAL}",
            f"/as {OWNER}",
            f"/nbenv instances {REAL}",
            f"/nbenv history {REAL}",
            f"/as {USER}",
            f"/nbenv instances {REAL}",
            f"/nbenv instances {REAL} --stop ana-box",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-m", "bot", "shell"],
        input=script + "\n",
        env=console_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    said = transcript(result.stdout)

    # The instance's answer: privately, with its link and what such an instance can reach.
    created = said[(USER, f"/nbenv instance {REAL} --name ana-box")]
    (link_line,) = [line for line in created.splitlines() if "?token=" in line]
    assert link_line.startswith("(only you) 🖥 instance `ana-box`")
    token = link_line.split("?token=", 1)[1].split()[0]
    assert "nbenv's store" in created
    # Someone of another team who may use the image, and the image's owner: the instance
    # and whose it is, never its token (nor in history).
    for viewer in (stranger, OWNER):
        listed = said[(viewer, f"/nbenv instances {REAL}")]
        assert f"`ana-box` {REAL} production" in listed and f"by @{USER}" in listed
        assert token not in listed
    assert token not in said[(OWNER, f"/nbenv history {REAL}")]
    # Nothing in a channel.
    assert all(token not in line for line in result.stdout.splitlines() if line[:1] == "#")
    # Its requester, later: the link again.
    assert token in said[(USER, f"/nbenv instances {REAL}")]
    assert "stopped instance" in said[(USER, f"/nbenv instances {REAL} --stop ana-box")]
    assert not port_open(int(link_line.split("127.0.0.1:", 1)[1].split("/", 1)[0]))

    history = subprocess.run(
        [sys.executable, "-m", "bot", "--as", OWNER, "history", REAL, "--json"],
        env=console_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "instance-ready" in history
    assert token not in history


def transcript(out: str) -> dict[tuple[str, str], str]:
    """What the console printed after each line typed, by (user, line)."""
    said: dict[tuple[str, str], list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        typed = re.match(r"^(U[A-Z0-9]+)> (.*)$", line)
        if typed:
            current = said.setdefault((typed[1], typed[2]), [])
        else:
            current.append(line)
    return {key: "\n".join(lines) for key, lines in said.items()}


def test_the_link_stays_with_its_owner_on_each_database(runtime: Any) -> None:
    """The service's answer (text and data) on SQLite and PostgreSQL alike."""
    from tests.conftest import IMAGE, sha_of

    commit = sha_of("privacy")
    runtime.nbenv.publish(OWNER, IMAGE, commit, report=report(True))
    anas_instance(runtime, IMAGE, commit)

    for viewer in (TESTER, OWNER):
        answer = runtime.nbenv.handle(viewer, f"instances {IMAGE}")
        assert TOKEN not in answer.text and TOKEN not in json.dumps(answer.data)
        assert [row["requested_by"] for row in answer.data] == [USER]
    own = runtime.nbenv.handle(USER, f"instances {IMAGE}")
    assert own.data[0]["url"].endswith(f"?token={TOKEN}")
