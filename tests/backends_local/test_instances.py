"""Local instances: `/nbenv instance` starts a token-protected Jupyter server on loopback,
pinned to the environment's SHA; it is recorded, listed, and stopped."""

from __future__ import annotations

import os
import re
import select
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bot.domain.errors import NbenvError, Refused
from tests.backends_local.conftest import local_config_text
from tests.conftest import IMAGE, OWNER, TESTER, USER
from tests.support.gitrepo import ImageRepo


def http_status(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port_range(size: int = 5) -> tuple[int, int]:
    """A small range of ports free right now, so parallel test runs do not collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    return base, base + size - 1


@pytest.fixture
def runtime(tmp_path: Path, repo: ImageRepo, sqlite_url: str) -> Any:
    from bot.bootstrap import build_runtime

    config_file = tmp_path / "instances.yaml"
    config_file.write_text(local_config_text(repo.path, free_port_range()), encoding="utf-8")
    # As the operator's console or CLI would (they may have instances without Docker).
    runtime = build_runtime(str(config_file), sqlite_url, run_by_operator=True)
    yield runtime
    # Never leave a server behind, whatever the test did.
    with runtime.store.read() as tx:
        rows = tx.instances.matching(image=IMAGE)
    for row in rows:
        if row["state"] == "running":
            runtime.nbenv.backend.stop_instance(row["name"], row["details"])


def in_production(runtime: Any, sha: str) -> None:
    app = runtime.nbenv
    app.publish(OWNER, IMAGE, sha, report={"python": "3.11", "packages": [], "notebooks": []})
    app.handle(TESTER, f"approve {IMAGE}")
    app.handle(OWNER, f"promote {IMAGE}")


def test_instance_is_started_reachable_recorded_listed_and_stopped(
    runtime: Any, repo: ImageRepo
) -> None:
    sha = repo.sha("initial")
    in_production(runtime, sha)

    reply = runtime.nbenv.handle(USER, f"instance {IMAGE} --name nlp-work")
    assert reply.data["sha"] == sha
    runtime.worker.run_until_idle()

    with runtime.store.read() as tx:
        row = tx.instances.get("nlp-work")
    assert row is not None
    assert (row["image"], row["env"], row["sha"], row["requested_by"]) == (
        IMAGE,
        "production",
        sha,
        USER,
    )
    assert row["state"] == "running"
    assert row["backend"] == "local"
    details = row["details"]
    assert "local Python environment" in details["note"]
    url: str = row["url"]
    port = details["port"]
    low, high = runtime.config.local.instances_port_range
    assert url.startswith(f"http://127.0.0.1:{port}/?token=")
    assert low <= port <= high
    token = url.split("token=", 1)[1]

    # Reachable with its token, closed to anyone without it.
    assert http_status(f"http://127.0.0.1:{port}/api/status", token) == 200
    assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
    # It serves the image folder as committed at the SHA.
    contents = urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{port}/api/contents/requirements.txt",
            headers={"Authorization": f"token {token}"},
        ),
        timeout=5,
    ).read()
    assert b"nltk==3.8.1" in contents

    listing = runtime.nbenv.handle(USER, f"instances {IMAGE}")
    assert "`nlp-work`" in listing.text
    assert [r["name"] for r in listing.data] == ["nlp-work"]

    # Someone else's instance is not theirs to stop.
    with pytest.raises(Refused):
        runtime.nbenv.handle(TESTER, f"instances {IMAGE} --stop nlp-work")
    assert http_status(f"http://127.0.0.1:{port}/api/status", token) == 200

    stopped = runtime.nbenv.handle(USER, f"instances {IMAGE} --stop nlp-work")
    assert "stopped" in stopped.text
    assert not port_open(port)
    assert not Path(details["directory"]).exists()
    with runtime.store.read() as tx:
        assert tx.instances.get("nlp-work")["state"] == "stopped"
        actions = [entry.action for entry in tx.audit.entries(image=IMAGE)]
    assert "instance-ready" in actions
    assert "instance-stop" in actions


def test_instances_from_staging_and_fallback_are_pinned_to_their_sha(
    runtime: Any, repo: ImageRepo
) -> None:
    in_production(runtime, repo.sha("initial"))
    runtime.nbenv.publish(
        OWNER,
        IMAGE,
        repo.sha("upgrade"),
        report={"python": "3.11", "packages": [], "notebooks": []},
    )

    runtime.nbenv.handle(TESTER, f"instance {IMAGE} --env staging --name try-staging")
    runtime.worker.run_until_idle()

    with runtime.store.read() as tx:
        row = tx.instances.get("try-staging")
    assert row["sha"] == repo.sha("upgrade")
    checkout = Path(row["details"]["checkout"])
    assert "nltk==3.9.1" in (checkout / "requirements.txt").read_text()
    assert (checkout / "tests" / "02_text.ipynb").exists()
    runtime.nbenv.handle(OWNER, f"instances {IMAGE} --stop try-staging")  # an owner may
    assert not port_open(row["details"]["port"])


def test_an_instance_that_cannot_start_says_why_and_leaves_nothing(
    tmp_path: Path, repo: ImageRepo
) -> None:
    from bot.backends.local.instances import LocalInstances
    from bot.config import load_config
    from bot.service.ports import InstanceRequest

    # Every port of the configured range is taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config_file = tmp_path / "one-port.yaml"
        config_file.write_text(local_config_text(repo.path, (port, port)), encoding="utf-8")
        instances = LocalInstances(load_config(config_file), tmp_path / "home", use_docker=False)
        request = InstanceRequest(
            "blocked", IMAGE, "production", repo.sha("initial"), USER, for_operator=True
        )

        with pytest.raises(NbenvError, match=f"no free port in {port}-{port}"):
            instances.start(request)

    assert not (tmp_path / "home" / "instances" / "blocked").exists()


def test_stopping_an_instance_that_is_already_gone_is_fine(
    tmp_path: Path, repo: ImageRepo, local_config: Any
) -> None:
    from bot.backends.local.instances import LocalInstances

    instances = LocalInstances(local_config, tmp_path / "home", use_docker=False)
    directory = tmp_path / "home" / "instances" / "gone"
    directory.mkdir(parents=True)

    # A PID no process has (beyond pid_max) and a port nobody listens on.
    instances.stop(
        "gone", {"pid": 2**22 + 1, "port": free_port_range(1)[0], "directory": str(directory)}
    )

    assert not directory.exists()


def test_an_idle_instance_stops_itself_kernel_first_then_the_server(
    tmp_path: Path, repo: ImageRepo, sqlite_url: str
) -> None:
    from bot.bootstrap import build_runtime
    from bot.config import load_config

    config_file = tmp_path / "idle.yaml"
    config_file.write_text(local_config_text(repo.path, free_port_range()), encoding="utf-8")
    config = load_config(config_file)
    assert config.images[IMAGE].instance.idle_timeout == 3 * 3600  # the documented default
    # One second idle (the config's floor is ten minutes: a Config built here may go below).
    image = config.images[IMAGE]
    instance = image.instance.model_copy(update={"idle_timeout": 1})
    images = {IMAGE: image.model_copy(update={"instance": instance})}
    runtime = build_runtime(
        None, sqlite_url, config=config.model_copy(update={"images": images}), run_by_operator=True
    )
    in_production(runtime, repo.sha("initial"))
    runtime.nbenv.handle(USER, f"instance {IMAGE} --name idle-box")
    runtime.worker.run_until_idle()
    with runtime.store.read() as tx:
        row = tx.instances.get("idle-box")
    details = row["details"]
    port, pid = details["port"], details["pid"]
    token = row["url"].split("token=", 1)[1]
    exited = os.pidfd_open(pid)  # readable once the server has exited: an event, no polling
    try:
        assert details["idle_timeout_s"] == 1
        (line,) = runtime.nbenv.handle(USER, "instances").text.splitlines()[1:]
        assert "running (stops after 1s idle)" in line

        # A kernel, as opening a notebook starts one; left idle, it is culled, and then the
        # server, with no kernel and no activity, shuts itself down (Jupyter looks once a
        # minute: this test takes about that long).
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/kernels",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as created:
            assert created.status == 201
        readable, _, _ = select.select([exited], [], [], 150)

        assert readable, "the idle server did not shut itself down"
        assert not port_open(port)
        log = Path(details["log"]).read_text(encoding="utf-8", errors="replace")
        # Never used, the kernel is still 'starting' when the culler takes it.
        assert re.search(r"Culling '\w+' kernel 'python3' .* seconds of inactivity", log), log
        assert "No kernels for" in log and "shutting down" in log
    finally:
        os.close(exited)
        runtime.nbenv.backend.stop_instance("idle-box", details)


def test_an_instance_in_docker_is_given_the_same_idle_shutdown(tmp_path: Path) -> None:
    from bot.backends.local.instances import docker_instance_command, idle_shutdown_options
    from bot.service.ports import InstanceRequest

    request = InstanceRequest("box", IMAGE, "production", "a" * 40, USER)
    command = docker_instance_command(request, 8890, tmp_path, "nbenv-local/x:a", "nb/x", 5400)
    never = docker_instance_command(request, 8890, tmp_path, "nbenv-local/x:a", "nb/x", None)

    # Options of the `jupyter lab` run inside the image, after the image's name.
    assert command[-len(idle_shutdown_options(5400)) :] == idle_shutdown_options(5400)
    assert "--ServerApp.shutdown_no_activity_timeout=5400" in command
    assert "--MappingKernelManager.cull_idle_timeout=5400" in command
    assert not [option for option in never if "cull" in option or "no_activity" in option]
