"""Local notebook instances: a token-protected Jupyter server on loopback per instance.

With a Docker engine and the image built here (`nbenv-local/IMAGE:SHA`, see the
pipeline), the server runs inside that image. Otherwise it is a Jupyter server of this
Python over a checkout of the image folder at the SHA, and the instance says so: its
packages are the bot's, not the image's.

Each instance lives in `$NBENV_HOME/instances/NAME/` (checkout, log, Jupyter runtime
files, a HOME of its own), readable by nbenv's OS user only. The server runs in its own
session, so it survives a restart of the bot and is stopped by process group; stopping
removes the folder.

Trust boundary. In a container, an instance sees its checkout and nothing else of ours:
no environment variable (only its own Jupyter token goes in), no store. Without Docker
it gets the allowed environment variables only (`sandbox_environment`: none of the bot's
secrets), but it runs as nbenv's own OS user, so its code can read and write whatever
that user can, the SQLite store included. Such instances go to the operator (CLI,
console) and to other people only when the config says so (`local.shared_instances`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bot import processes
from bot.backends.local.git import Repositories
from bot.backends.local.pipeline import LOCAL_IMAGE_REPOSITORY, docker_available
from bot.config import Config
from bot.domain.errors import NbenvError, Refused
from bot.runner.notebook_tests import sandbox_environment
from bot.service.ports import InstanceInfo, InstanceRequest

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3  # another program may take the port we picked before Jupyter binds it
CONTAINER_PORT = 8888
LOCAL_NOTE = (
    "Runs in the bot's local Python environment over a checkout of {folder} at {sha}: "
    "the image's own packages are not installed here (no Docker engine). Not isolated: "
    "it runs as the OS user of nbenv, so code in it can read and write what that user can, "
    "including nbenv's store (approvals, pointers, audit log) and the bot's files; it gets "
    "none of the bot's environment variables."
)
NOT_SHARED = (
    "no Docker engine or no image built here for {sha}, so this instance would run outside "
    "any container, as the OS user of nbenv, able to read and write nbenv's store and "
    "files: the operator has not offered such instances to others (config "
    "local.shared_instances)"
)
DOCKER_NOTE = "Runs inside the image {tag} (Docker), with {folder} at {sha} mounted."


class InstanceFailed(NbenvError):
    """The notebook server did not come up."""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def server_answers(port: int, token: str) -> bool:
    """GET /api/status with the token answers 200: the server is up and ours."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def idle_shutdown_options(seconds: int | None) -> list[str]:
    """Jupyter Server's own idle culling, so an idle instance stops itself as a Workbench
    VM does: kernels and terminals idle that long are shut down (connected ones too: an
    open browser tab is not use; busy kernels are kept), and the server exits once it has
    had no kernel and no activity that long (`shutdown_no_activity_timeout`, which Jupyter
    checks once a minute). None: never."""
    if seconds is None:
        return []
    every = max(1, min(60, seconds // 10))  # how often idle kernels and terminals are looked for
    return [
        f"--ServerApp.shutdown_no_activity_timeout={seconds}",
        f"--MappingKernelManager.cull_idle_timeout={seconds}",
        f"--MappingKernelManager.cull_interval={every}",
        "--MappingKernelManager.cull_connected=True",
        f"--TerminalManager.cull_inactive_timeout={seconds}",
        f"--TerminalManager.cull_interval={every}",
    ]


def _is_ours(pid: int, checkout: str) -> bool:
    """Guard against a recycled PID: our server's command line names its checkout."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True  # no /proc (macOS): trust the recorded PID
    try:
        return checkout.encode() in cmdline.read_bytes()
    except OSError:
        return False


class LocalInstances:
    def __init__(
        self,
        config: Config,
        home: Path,
        *,
        use_docker: bool | None = None,
        python: str = sys.executable,
        repositories: Repositories | None = None,
    ) -> None:
        self.config = config
        self.repositories = repositories or Repositories(config, home)
        self.home = home
        self.use_docker = use_docker
        self.python = python
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, request: InstanceRequest) -> InstanceInfo:
        folder = self.config.image_folder(request.image)
        directory = self.home / "instances" / request.name
        if directory.exists():
            raise Refused(f"an instance folder {directory} already exists")
        checkout = directory / "work"
        tag = f"{LOCAL_IMAGE_REPOSITORY}/{request.image}:{request.sha}"
        in_container = self._docker() and self._docker_image_exists(tag)
        if not in_container and not (request.for_operator or self.config.local.shared_instances):
            raise Refused(NOT_SHARED.format(sha=request.sha[:7]))
        repo = self.repositories.of(request.image)
        if not repo.has_commit(request.sha):
            repo = self.repositories.of(request.image, refresh=True)
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)  # its log and runtime files hold the server's token
        try:
            repo.export(request.sha, folder, checkout)
            if in_container:
                return self._start_docker(request, directory, checkout, tag, folder)
            return self._start_local(request, directory, checkout, folder)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def stop(self, name: str, details: dict[str, Any]) -> None:
        """Stop the server (idempotent: a server already gone is fine) and remove its files."""
        if details.get("container"):
            subprocess.run(
                ["docker", "rm", "--force", str(details["container"])],
                capture_output=True,
                check=False,
            )
        elif details.get("pid"):
            self._stop_process(name, int(details["pid"]), str(details.get("checkout") or ""))
        port = details.get("port")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while port and port_is_open(int(port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        directory = details.get("directory")
        if directory and Path(directory).parent == self.home / "instances":
            shutil.rmtree(directory, ignore_errors=True)

    # -- local Python ------------------------------------------------------------------------

    def _start_local(
        self, request: InstanceRequest, directory: Path, checkout: Path, folder: str
    ) -> InstanceInfo:
        token = secrets.token_urlsafe(24)
        log_path = directory / "jupyter.log"
        home = directory / "home"
        home.mkdir()
        # The notebook's code runs in this server's kernels: none of the bot's variables.
        env = sandbox_environment(home=home)
        # The token goes through the environment: a command line is visible to every user.
        env.update(
            {
                "JUPYTER_TOKEN": token,
                "JUPYTER_RUNTIME_DIR": str(directory / "runtime"),
                "JUPYTER_CONFIG_DIR": str(directory / "config"),
            }
        )
        idle_timeout = self.config.images[request.image].instance.idle_timeout
        failure = "no free port"
        for _ in range(START_ATTEMPTS):
            port = self._free_port()
            command = [
                self.python,
                "-m",
                "jupyter_server",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                "--ServerApp.open_browser=False",
                f"--ServerApp.root_dir={checkout}",
                *idle_shutdown_options(idle_timeout),
            ]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                command.append("--ServerApp.allow_root=True")
            with log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    command,
                    cwd=checkout,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(process, port, token):
                self._children[request.name] = process
                details = {
                    "runtime": "local-python",
                    "pid": process.pid,
                    "port": port,
                    "directory": str(directory),
                    "checkout": str(checkout),
                    "log": str(log_path),
                    "python": self.python,
                    "idle_timeout_s": idle_timeout,
                    "note": LOCAL_NOTE.format(folder=folder, sha=request.sha[:7]),
                }
                return InstanceInfo(
                    request.name, f"http://127.0.0.1:{port}/?token={token}", "running", details
                )
            self._kill_group(process.pid)
            process.wait()
            failure = _last_line(log_path)
        raise InstanceFailed(f"the notebook server of {request.name} did not start: {failure}")

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int, token: str) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if server_answers(port, token):
                return True
            time.sleep(0.2)
        return False

    def _free_port(self) -> int:
        low, high = self.config.local.instances_port_range
        for port in range(low, high + 1):
            if port_is_free(port):
                return port
        raise InstanceFailed(f"no free port in {low}-{high} (config local.instances_port_range)")

    def _stop_process(self, name: str, pid: int, checkout: str) -> None:
        child = self._children.pop(name, None)
        if not processes.alive(pid) or not _is_ours(pid, checkout):
            return
        self._kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                return
            if child is None and not processes.alive(pid):
                return
            time.sleep(0.1)
        self._kill_group(pid, signal.SIGKILL)
        if child is not None:
            child.wait()

    @staticmethod
    def _kill_group(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    # -- Docker ------------------------------------------------------------------------------

    def _docker(self) -> bool:
        return docker_available() if self.use_docker is None else self.use_docker

    @staticmethod
    def _docker_image_exists(tag: str) -> bool:
        result = subprocess.run(
            ["docker", "image", "inspect", tag], capture_output=True, check=False
        )
        return result.returncode == 0

    def _start_docker(
        self, request: InstanceRequest, directory: Path, checkout: Path, tag: str, folder: str
    ) -> InstanceInfo:
        token = secrets.token_urlsafe(24)
        port = self._free_port()
        idle_timeout = self.config.images[request.image].instance.idle_timeout
        result = subprocess.run(
            docker_instance_command(request, port, checkout, tag, folder, idle_timeout),
            capture_output=True,
            # For the Docker client (it reads DOCKER_HOST and the like); the container
            # gets JUPYTER_TOKEN only, by name, so the token is on no command line.
            env={**os.environ, "JUPYTER_TOKEN": token},
            check=False,
        )
        if result.returncode != 0:
            reason = result.stderr.decode(errors="replace").strip().splitlines()
            raise InstanceFailed(f"docker run failed: {reason[-1] if reason else 'no output'}")
        container = result.stdout.decode().strip()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if server_answers(port, token):
                details = {
                    "runtime": "docker",
                    "container": container,
                    "port": port,
                    "directory": str(directory),
                    "checkout": str(checkout),
                    "image": tag,
                    "idle_timeout_s": idle_timeout,
                    "note": DOCKER_NOTE.format(tag=tag, folder=folder, sha=request.sha[:7]),
                }
                return InstanceInfo(
                    request.name, f"http://127.0.0.1:{port}/?token={token}", "running", details
                )
            time.sleep(0.5)
        subprocess.run(["docker", "rm", "--force", container], capture_output=True, check=False)
        raise InstanceFailed(f"the notebook server in {tag} did not answer within 60 s")


def docker_instance_command(
    request: InstanceRequest,
    port: int,
    checkout: Path,
    tag: str,
    folder: str,
    idle_timeout: int | None = None,
) -> list[str]:
    """`docker run` of an instance: the trust boundary with Docker. The container gets one
    variable of ours (its own JUPYTER_TOKEN), one folder (the checkout at the SHA), and a
    port on loopback: no store, no secret of the bot."""
    return [
        "docker",
        "run",
        "--detach",
        "--name",
        f"nbenv-{request.name}",
        "--publish",
        f"127.0.0.1:{port}:{CONTAINER_PORT}",
        "--env",
        "JUPYTER_TOKEN",
        "--volume",
        f"{checkout}:/home/jupyter/{Path(folder).name}",
        "--label",
        f"nbenv.image={request.image}",
        "--label",
        f"nbenv.env={request.env}",
        "--label",
        f"nbenv.sha={request.sha}",
        "--entrypoint",
        "jupyter",
        tag,
        "lab",
        "--ip=0.0.0.0",
        f"--port={CONTAINER_PORT}",
        "--no-browser",
        "--allow-root",
        "--ServerApp.root_dir=/home/jupyter",
        *idle_shutdown_options(idle_timeout),
    ]


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][-300:] if lines else "no output"
