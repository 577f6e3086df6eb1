"""What runs our users' code gets none of our secrets.

The bot is started with its secrets in its environment; a cell really run in a local
Jupyter instance, and a test notebook really run by a build without Docker, print their
whole `os.environ`: none of the secrets is there. With Docker, the `docker run` command
lines (seen by a stand-in `docker` program, the boundary where they leave us) pass no
variable of ours and mount neither the store nor nbenv's home. Without Docker, instances
go to people asking through Slack only when the operator opts in.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from bot.domain.errors import NbenvError
from tests.backends_local.conftest import local_config_text
from tests.backends_local.test_instances import free_port_range, port_open
from tests.backends_local.test_pipeline import Stack, running_stack
from tests.conftest import IMAGE, OWNER, TESTER, USER
from tests.support.gitrepo import NOTEBOOK_TEXT_OK, ImageRepo, notebook

SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-secret-bot-token-4242",
    "SLACK_SIGNING_SECRET": "secret-signing-4242",
    "SLACK_APP_TOKEN": "xapp-secret-app-token-4242",
    "NBENV_AUDIT_KEY": "secret-audit-key-4242-0123456789abcdef",
    "GOOGLE_APPLICATION_CREDENTIALS": "/secret/adc-4242.json",
    "SOME_VENDOR_API_KEY": "secret-vendor-key-4242",
}
PRINT_ENVIRON = "import os, json\nprint('ENVIRON=' + json.dumps(dict(os.environ)))"


@pytest.fixture
def stack(local_config_file: Path, sqlite_url: str, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(local_config_file, sqlite_url, tmp_path / "home") as running:
        yield running


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bot's process holds its secrets, as `nbenv serve` is started with them."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def printed_environ(text: str) -> dict[str, str]:
    (line,) = [line for line in text.splitlines() if line.startswith("ENVIRON=")]
    return json.loads(line.removeprefix("ENVIRON="))


def assert_no_secret(environ: dict[str, str], *more: str) -> None:
    everything = json.dumps(environ)
    for name, value in SECRETS.items():
        assert name not in environ
        assert value not in everything
    for value in more:
        assert value not in everything


# -- a cell in a local Jupyter instance ------------------------------------------------------


async def _run_cell(port: int, token: str, code: str) -> str:
    """Execute CODE in a new kernel of the Jupyter server, as JupyterLab does: REST to
    start the kernel, then Jupyter's message protocol over its websocket."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect

    base = f"127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    http = AsyncHTTPClient()
    started = await http.fetch(
        f"http://{base}/api/kernels", method="POST", body="{}", headers=headers
    )
    kernel = json.loads(started.body)["id"]
    socket = await websocket_connect(
        HTTPRequest(f"ws://{base}/api/kernels/{kernel}/channels", headers=headers)
    )
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "username": "test",
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": False},
        "channel": "shell",
        "buffers": [],
    }
    await socket.write_message(json.dumps(request))
    output = []
    while True:
        raw = await asyncio.wait_for(socket.read_message(), 60)
        assert raw is not None, "the kernel's websocket closed"
        message = json.loads(raw)
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "stream":
            output.append(message["content"]["text"])
        elif kind == "error":
            raise AssertionError("\n".join(message["content"]["traceback"]))
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            break
    socket.close()
    await http.fetch(f"http://{base}/api/kernels/{kernel}", method="DELETE", headers=headers)
    return "".join(output)


def run_cell(url: str, code: str) -> str:
    port = int(url.split(":")[2].split("/")[0])
    token = url.split("token=", 1)[1]
    return asyncio.run(_run_cell(port, token, code))


def in_production(runtime: Any, sha: str) -> None:
    app = runtime.nbenv
    app.publish(OWNER, IMAGE, sha, report={"python": "3.11", "packages": [], "notebooks": []})
    app.handle(TESTER, f"approve {IMAGE}")
    app.handle(OWNER, f"promote {IMAGE}")


def make_runtime(tmp_path: Path, repo: ImageRepo, db_url: str, **options: Any) -> Any:
    from bot.bootstrap import build_runtime

    config_file = tmp_path / "sandbox.yaml"
    config_file.write_text(local_config_text(repo.path, free_port_range()), encoding="utf-8")
    return build_runtime(str(config_file), db_url, **options)


def stop_all(runtime: Any) -> None:
    with runtime.store.read() as tx:
        rows = tx.instances.matching(image=IMAGE)
    for row in rows:
        if row["state"] == "running":
            runtime.nbenv.backend.stop_instance(row["name"], row["details"])


def test_a_cell_in_a_local_instance_cannot_read_the_bots_secrets(
    tmp_path: Path, repo: ImageRepo, sqlite_url: str, secrets_in_env: None
) -> None:
    runtime = make_runtime(tmp_path, repo, sqlite_url, run_by_operator=True)
    try:
        in_production(runtime, repo.sha("initial"))
        runtime.nbenv.handle(USER, f"instance {IMAGE} --name env-probe")
        runtime.worker.run_until_idle()
        with runtime.store.read() as tx:
            row = tx.instances.get("env-probe")
        assert row["state"] == "running"

        environ = printed_environ(run_cell(row["url"], PRINT_ENVIRON))

        assert_no_secret(environ, sqlite_url)
        # Still a working environment: its PATH, and a HOME of its own, not the bot's.
        assert environ["PATH"] == os.environ["PATH"]
        assert environ["HOME"] == str(Path(row["details"]["directory"]) / "home")
        assert environ["HOME"] != os.environ.get("HOME")
        # Nor does the server that runs the kernels hold them.
        server_environ = Path(f"/proc/{row['details']['pid']}/environ")
        if server_environ.exists():
            for value in SECRETS.values():
                assert value.encode() not in server_environ.read_bytes()
    finally:
        stop_all(runtime)


# -- a test notebook of a build without Docker ---------------------------------------------


def test_a_test_notebook_of_a_build_cannot_read_the_bots_secrets(
    stack: Stack, repo: ImageRepo, secrets_in_env: None
) -> None:
    secret_names = json.dumps(sorted(SECRETS))
    sha = repo.commit(
        "probe",
        "A test notebook that looks for secrets",
        {
            f"{repo.folder}/tests/03_env.ipynb": notebook(
                PRINT_ENVIRON,
                f"import os\nfound = [n for n in {secret_names} if n in os.environ]\n"
                "assert not found, found",
            ),
            f"{repo.folder}/tests/02_text.ipynb": NOTEBOOK_TEXT_OK,  # the tip broke it
        },
        branch="staging",
    )

    final = stack.build(sha)

    executed = Path(final["logUrl"].removeprefix("file://")).parent / "report" / "executed"
    probe = nbformat.read(executed / "03_env.ipynb", as_version=4)
    printed = "".join(
        output.get("text", "") for cell in probe["cells"] for output in cell.get("outputs", [])
    )
    environ = printed_environ(printed)
    assert_no_secret(environ)
    assert environ["HOME"] != os.environ.get("HOME")
    assert final["status"] == "SUCCESS", final.get("statusDetail")


def test_the_runner_gives_its_kernels_none_of_its_secrets(tmp_path: Path) -> None:
    """`nbenv test-notebooks` run by someone whose shell holds secrets (python -m bot.runner:
    the same self-contained runner the images run)."""
    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "env.ipynb").write_text(notebook(PRINT_ENVIRON), encoding="utf-8")
    report = tmp_path / "out" / "report.json"

    result = subprocess.run(
        [sys.executable, "-m", "bot.runner", str(folder), "--report", str(report)],
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    executed = nbformat.read(report.parent / "executed" / "env.ipynb", as_version=4)
    environ = printed_environ(executed["cells"][0]["outputs"][0]["text"])
    assert_no_secret(environ)
    assert environ["PATH"] == os.environ["PATH"]


# -- with Docker: the command lines -----------------------------------------------------------


FAKE_DOCKER = textwrap.dedent(
    """\
    #!{python}
    # A stand-in `docker`: records each command line; `run` fails (no engine here), the
    # rest succeed.
    import json, sys
    with open({log!r}, "a", encoding="utf-8") as log:
        log.write(json.dumps(sys.argv[1:]) + "\\n")
    if sys.argv[1:2] == ["info"]:
        print("27.0.0")
    if sys.argv[1:3] == ["image", "inspect"]:
        print("sha256:" + "0" * 64)
    sys.exit(1 if sys.argv[1:2] == ["run"] else 0)
    """
)


@pytest.fixture
def docker_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "docker-calls.jsonl"
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, log=str(log)), encoding="utf-8")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def docker_runs(log: Path) -> list[list[str]]:
    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return [call for call in calls if call[:1] == ["run"]]


def assert_isolated(run: list[str], store: Path, home: Path) -> None:
    """No variable of ours goes in (JUPYTER_TOKEN alone, by name), and no mount reaches
    the store or nbenv's home as a whole."""
    for index, arg in enumerate(run):
        assert not arg.startswith("--env-file") and not arg.startswith("-e")
        assert not arg.startswith("--env=") and not arg.startswith("--mount")
        if arg == "--env":
            assert run[index + 1] == "JUPYTER_TOKEN"
        if arg in ("-v", "--volume"):
            host = Path(run[index + 1].split(":", 1)[0])
            assert not home.is_relative_to(host)  # neither nbenv's home nor above it
            assert not store.is_relative_to(host)
    assert all(value not in " ".join(run) for value in SECRETS.values())
    assert "--privileged" not in run and "--network=host" not in run


def test_with_docker_instances_and_test_runs_get_no_variable_or_store_of_ours(
    local_config: Any, repo: ImageRepo, tmp_path: Path, docker_calls: Path, secrets_in_env: None
) -> None:
    from bot.backends.local.instances import LocalInstances
    from bot.backends.local.pipeline import LocalPipeline
    from bot.service.ports import InstanceRequest

    home = tmp_path / "home"  # NBENV_HOME, with the store in it
    store = home / "nbenv.db"
    pipeline = LocalPipeline(local_config, home, lambda *_: None, lambda *_: None, use_docker=True)
    instances = LocalInstances(local_config, home, use_docker=True)

    build = pipeline.run(IMAGE, repo.sha("upgrade"), OWNER)
    assert build["status"] == "FAILURE"  # the stand-in engine runs nothing
    request = InstanceRequest("in-docker", IMAGE, "staging", repo.sha("upgrade"), USER)
    with pytest.raises(NbenvError, match="docker run failed"):
        instances.start(request)  # for someone else: Docker isolates it

    test_run, instance_run = docker_runs(docker_calls)
    assert "/nbenv/notebook_tests.py" in " ".join(test_run)
    assert "JUPYTER_TOKEN" in instance_run
    for run in (test_run, instance_run):
        assert_isolated(run, store, home)


# -- without Docker: who may have an instance -------------------------------------------------


def test_without_docker_instances_are_the_operators_unless_shared(
    tmp_path: Path, repo: ImageRepo, sqlite_url: str
) -> None:
    from bot.backends.local.instances import LocalInstances
    from bot.config import load_config
    from bot.service.ports import InstanceRequest

    config_file = tmp_path / "not-shared.yaml"
    config_file.write_text(local_config_text(repo.path, free_port_range()), encoding="utf-8")
    config = load_config(config_file)
    assert config.local.shared_instances is False  # the default
    instances = LocalInstances(config, tmp_path / "home", use_docker=False)
    request = InstanceRequest("for-ana", IMAGE, "production", repo.sha("initial"), USER)

    with pytest.raises(NbenvError, match=r"config local\.shared_instances"):
        leaked = instances.start(request)
        instances.stop("for-ana", leaked.details)  # reached only when nothing refused it
    assert not (tmp_path / "home" / "instances" / "for-ana").exists()

    shared_file = tmp_path / "shared.yaml"
    shared_file.write_text(
        local_config_text(repo.path, free_port_range()).replace(
            "local:\n", "local:\n  shared_instances: true\n"
        ),
        encoding="utf-8",
    )
    shared = LocalInstances(load_config(shared_file), tmp_path / "home", use_docker=False)
    info = shared.start(request)
    try:
        assert info.state == "running"
        # The answer says plainly what such an instance can reach.
        assert "can read and write" in info.details["note"]
        assert "nbenv's store" in info.details["note"]
        assert "none of the bot's environment variables" in info.details["note"]
    finally:
        shared.stop("for-ana", info.details)
    assert not port_open(info.details["port"])
