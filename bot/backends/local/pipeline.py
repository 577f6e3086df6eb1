"""The local staging pipeline: the same build the Cloud Build config describes, run here.

A build resolves REF in the image's git repository, exports the image folder as
committed at that SHA, builds the image and runs the test notebooks inside it when a
Docker engine answers, or else runs them with this Python (and says so: a build
warning, the step's id and name, and the log), then hands the test report to the
relay. At every stage it emits a Build resource shaped exactly like Cloud Build's
(the JSON of google.devtools.cloudbuild.v1.Build, as Cloud Build publishes it on the
`cloud-builds` topic), so threads, staging publication and failure reports all go
through the relay code that handles Cloud Build's own messages.

BRANCH_NAME, which decides what the relay does on SUCCESS (bot/domain/builds.py), is
REF itself when REF is a local branch (the staging branch → publish to staging; the
production branch → git-driven promotion), and empty for anything else (a tag, an
explicit commit SHA), as on Cloud Build, where a trigger run by `commitSha` or
`tagName` carries no BRANCH_NAME: the result is recorded, no environment moves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bot.backends.local.git import GitRepo, Repositories, is_url
from bot.config import Config
from bot.domain.errors import NbenvError
from bot.runner.notebook_tests import sandbox_environment

log = logging.getLogger(__name__)

EmitBuild = Callable[[dict[str, Any], dict[str, str]], object]  # (build, Pub/Sub attributes)
EmitReport = Callable[[str, str, dict[str, Any], str], object]  # (image, sha, report, build id)

# Under the job queue's 30-minute lease (bot/service/jobs.py), so a long build is never
# taken for a crashed one and started a second time.
BUILD_TIMEOUT_S = 1200
DOCKER_PROBE_TIMEOUT_S = 10
KILL_WAIT_S = 5.0  # for the processes of a timed-out step to be gone
LOCAL_IMAGE_REPOSITORY = "nbenv-local"  # docker images built here: nbenv-local/IMAGE:SHA
LOCAL_PYTHON_NOTE = (
    "No Docker engine answered: the test notebooks ran in the bot's own Python "
    "environment, not inside the image, so the image's packages were not tested."
)
FAILURES_NAMED = 3  # failing notebooks named in failureInfo before "and N more"


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC, as Cloud Build writes its times."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def docker_available() -> bool:
    """True when a Docker engine answers (not merely when the CLI is installed)."""
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=DOCKER_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


def runner_script() -> Path:
    """The self-contained test runner, copied into images that know nothing of ours."""
    import bot.runner.notebook_tests as runner

    return Path(runner.__file__)


def docker_test_command(tag: str, source: Path, report_dir: Path, args: list[str]) -> list[str]:
    """`docker run` of the test runner inside the image TAG.

    The trust boundary of a build with Docker: the container gets no environment
    variable of ours (no --env: the bot's secrets stay outside) and sees three folders
    only: the runner (read-only), the exported source and the report folder, never the
    store or the rest of nbenv's home.
    """
    return [
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "python",
        "-v",
        f"{runner_script()}:/nbenv/notebook_tests.py:ro",
        "-v",
        f"{source}:/workspace",
        "-v",
        f"{report_dir}:{report_dir}",
        "-w",
        "/workspace",
        tag,
        *args,
    ]


class StepFailed(Exception):
    def __init__(self, detail: str, failure_type: str = "USER_BUILD_STEP") -> None:
        super().__init__(detail)
        self.detail = detail
        self.failure_type = failure_type


class StepTimedOut(Exception):
    pass


@dataclass
class Step:
    id: str
    name: str
    args: list[str]
    status: str = "QUEUED"
    start: str | None = None
    end: str | None = None
    exit_code: int | None = None

    def resource(self) -> dict[str, Any]:
        step: dict[str, Any] = {"name": self.name, "args": self.args, "id": self.id}
        step["status"] = self.status
        if self.start:
            step["timing"] = {
                "startTime": self.start,
                **({"endTime": self.end} if self.end else {}),
            }
        if self.exit_code is not None:
            step["exitCode"] = self.exit_code
        return step


@dataclass
class Build:
    """One build's state, rendered as a Cloud Build Build resource at each stage."""

    id: str
    image: str
    sha: str
    ref: str
    branch: str
    tag: str
    repo_url: str  # as configured: a URL, or the file:// URL of a local repository
    folder: str
    requested_by: str
    subject: str
    log_path: Path
    steps: list[Step]
    images: list[str] = field(default_factory=list)
    status: str = "QUEUED"
    status_detail: str | None = None
    failure: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)
    create_time: str = field(default_factory=timestamp)
    start_time: str | None = None
    finish_time: str | None = None
    image_digests: list[dict[str, str]] = field(default_factory=list)
    timeout_s: float = BUILD_TIMEOUT_S

    def resource(self) -> dict[str, Any]:
        substitutions = {
            "COMMIT_SHA": self.sha,
            "SHORT_SHA": self.sha[:7],
            "BRANCH_NAME": self.branch,
            "REF_NAME": self.ref,
            "REPO_NAME": self.repo_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"),
            "_IMAGE_NAME": self.image,
            "_REQUESTED_BY": self.requested_by,
            "_COMMIT_SUBJECT": self.subject,
        }
        if self.tag:
            substitutions["TAG_NAME"] = self.tag
        build: dict[str, Any] = {
            "name": f"projects/local/locations/local/builds/{self.id}",
            "id": self.id,
            "projectId": "local",
            "status": self.status,
            "source": {
                "gitSource": {"url": self.repo_url, "dir": self.folder, "revision": self.sha}
            },
            "steps": [step.resource() for step in self.steps],
            "createTime": self.create_time,
            "timeout": f"{self.timeout_s:g}s",
            "images": self.images,
            "logUrl": self.log_path.as_uri(),
            "substitutions": substitutions,
            "tags": ["nbenv", "local", self.image],
        }
        if self.status_detail:
            build["statusDetail"] = self.status_detail
        if self.start_time:
            build["startTime"] = self.start_time
        if self.finish_time:
            build["finishTime"] = self.finish_time
            build["timing"] = {"BUILD": {"startTime": self.start_time, "endTime": self.finish_time}}
            fetch = self.steps[0]
            if fetch.start and fetch.end:
                build["timing"]["FETCHSOURCE"] = {"startTime": fetch.start, "endTime": fetch.end}
            build["results"] = {
                "images": self.image_digests,
                "buildStepImages": ["" for _ in self.steps],
            }
        if self.failure:
            build["failureInfo"] = self.failure
        if self.warnings:
            build["warnings"] = [{"text": text, "priority": "WARNING"} for text in self.warnings]
        return build


def branch_name(repo: GitRepo, ref: str) -> str:
    """BRANCH_NAME for a build of REF (see the module docstring)."""
    return ref if repo.is_branch(ref) else ""


class LocalPipeline:
    def __init__(
        self,
        config: Config,
        home: Path,
        emit_build: EmitBuild,
        emit_report: EmitReport,
        *,
        use_docker: bool | None = None,
        python: str = sys.executable,
        timeout_s: float = BUILD_TIMEOUT_S,
        repositories: Repositories | None = None,
    ) -> None:
        self.config = config
        self.repositories = repositories or Repositories(config, home)
        self.timeout_s = timeout_s
        self.home = home
        self.emit_build = emit_build
        self.emit_report = emit_report
        self.use_docker = use_docker
        self.python = python

    # -- entry -------------------------------------------------------------------------------

    def run(self, image: str, ref: str | None, requested_by: str) -> dict[str, Any]:
        """Build IMAGE at REF to the end; returns the last Build resource emitted.

        A REF the repository does not have raises BadInput before anything is emitted:
        there is no commit to open a thread for.
        """
        settings = self.config.images[image]
        ref = ref or settings.source.staging_branch
        source = settings.source.repo
        repo = self.repositories.of(image, refresh=True)
        sha = repo.resolve(ref)
        folder = self.config.image_folder(image)
        docker = docker_available() if self.use_docker is None else self.use_docker
        build_id = str(uuid.uuid4())
        workdir = self.home / "builds" / build_id
        workdir.mkdir(parents=True)
        build = Build(
            id=build_id,
            image=image,
            sha=sha,
            ref=ref,
            branch=branch_name(repo, ref),
            tag=ref if repo.is_tag(ref) else "",
            repo_url=source if is_url(source) else repo.path.as_uri(),
            folder=folder,
            requested_by=requested_by,
            subject=repo.subject(sha),
            log_path=workdir / "build.log",
            steps=self._steps(image, sha, folder, docker, workdir),
            timeout_s=self.timeout_s,
        )
        if docker:
            build.images = [self._docker_tag(image, sha)]
        else:
            build.warnings.append(LOCAL_PYTHON_NOTE)
        with build.log_path.open("a", encoding="utf-8") as log_file:
            self._log(log_file, f"build {build_id}: {image} at {ref} ({sha}), by {requested_by}")
            if not docker:
                self._log(log_file, LOCAL_PYTHON_NOTE)
            self._emit(build)
            self._execute(build, repo, workdir, docker, log_file)
        return build.resource()

    # -- the steps ---------------------------------------------------------------------------

    def _docker_tag(self, image: str, sha: str) -> str:
        return f"{LOCAL_IMAGE_REPOSITORY}/{image}:{sha}"

    def _steps(self, image: str, sha: str, folder: str, docker: bool, workdir: Path) -> list[Step]:
        source = workdir / "source"
        report = workdir / "report" / "report.json"
        steps = [Step("checkout", "git", ["archive", f"{sha}:{folder}"])]
        tests = f"{folder}/tests"
        if docker:
            tag = self._docker_tag(image, sha)
            steps.append(Step("build", "docker", ["build", "-t", tag, str(source / folder)]))
            steps.append(
                Step(
                    "test-notebooks",
                    tag,
                    ["python", "/nbenv/notebook_tests.py", tests, "--report", str(report)],
                )
            )
        else:
            steps.append(
                Step(
                    "test-notebooks-in-local-python",
                    f"local Python {sys.version.split()[0]} (no Docker engine)",
                    ["-m", "bot.runner", tests, "--report", str(report)],
                )
            )
        return steps

    def _execute(
        self, build: Build, repo: GitRepo, workdir: Path, docker: bool, log_file: IO[str]
    ) -> None:
        deadline = time.monotonic() + build.timeout_s
        build.status = "WORKING"
        build.start_time = timestamp()
        source = workdir / "source"
        report_path = workdir / "report" / "report.json"
        try:
            for index, step in enumerate(build.steps):
                self._start_step(build, index, log_file)
                if step.id == "checkout":
                    self._checkout(repo, build, source)
                elif step.id == "build":
                    self._run(step, ["docker", *step.args], log_file, deadline, cwd=workdir)
                    build.image_digests = [_image_digest(tag) for tag in build.images]
                else:
                    self._test(build, step, docker, source, report_path, log_file, deadline)
                step.status, step.end = "SUCCESS", timestamp()
        except StepFailed as failure:
            self._fail_step(build, failure.detail, log_file)
            build.status = "FAILURE"
            build.failure = {"type": failure.failure_type, "detail": failure.detail}
            build.status_detail = failure.detail
        except StepTimedOut:
            self._fail_step(build, "build timed out", log_file, status="TIMEOUT")
            build.status = "TIMEOUT"
            build.status_detail = f"build timed out after {build.timeout_s:g} s"
        except Exception as error:  # a bug or a broken machine: say so rather than hang
            log.exception("local build %s failed", build.id)
            self._fail_step(build, repr(error), log_file)
            build.status = "INTERNAL_ERROR"
            build.status_detail = f"internal error: {error}"
        else:
            build.status = "SUCCESS"
        build.finish_time = timestamp()
        self._log(log_file, f"build {build.id}: {build.status}")
        log_file.flush()
        self._emit(build)

    def _start_step(self, build: Build, index: int, log_file: IO[str]) -> None:
        step = build.steps[index]
        step.status, step.start = "WORKING", timestamp()
        self._log(log_file, f'Step #{index} - "{step.id}": {step.name} {" ".join(step.args)}')
        self._emit(build)

    def _fail_step(
        self, build: Build, detail: str, log_file: IO[str], status: str = "FAILURE"
    ) -> None:
        for step in build.steps:
            if step.status == "WORKING":
                step.status, step.end = status, timestamp()
        self._log(log_file, f"ERROR: {detail}")

    def _checkout(self, repo: GitRepo, build: Build, source: Path) -> None:
        try:
            repo.export(build.sha, build.folder, source / build.folder)
        except NbenvError as error:
            raise StepFailed(error.message, "FETCH_SOURCE_FAILED") from None
        if not sorted((source / build.folder / "tests").glob("*.ipynb")):
            raise StepFailed(f"no test notebooks in {build.folder}/tests at {build.sha[:7]}")

    def _test(
        self,
        build: Build,
        step: Step,
        docker: bool,
        source: Path,
        report_path: Path,
        log_file: IO[str],
        deadline: float,
    ) -> None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        if docker:
            command = docker_test_command(step.name, source, report_path.parent, step.args[1:])
            env = None  # the Docker client's; the container gets no variable of ours
        else:
            command = [self.python, *step.args]
            # No container: the runner and its kernels get the allowed variables only,
            # and a HOME of their own (see sandbox_environment).
            scratch_home = source.parent / "home"
            scratch_home.mkdir(exist_ok=True)
            env = sandbox_environment(home=scratch_home)
        code = self._run(step, command, log_file, deadline, cwd=source, check=False, env=env)
        report = self._load_report(report_path)
        if report is not None:
            # Passed or failed, the version is history: the relay records it with its report.
            self.emit_report(build.image, build.sha, report, build.id)
        if report is None:
            raise StepFailed(f"the test runner wrote no report (exit status {code}); see the log")
        failures = [n for n in report.get("notebooks") or [] if n.get("status") != "passed"]
        if failures:
            raise StepFailed(_failure_detail(failures))
        if code != 0:
            raise StepFailed(f"the test runner exited with status {code}; see the log")

    def _run(
        self,
        step: Step,
        command: list[str],
        log_file: IO[str],
        deadline: float,
        *,
        cwd: Path,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> int:
        log_file.flush()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepTimedOut()
        # Its own process group: on a timeout the kernels the runner started go too.
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise StepTimedOut() from None
        step.exit_code = code
        if check and code != 0:
            raise StepFailed(f'step "{step.id}" exited with status {code}')
        return code

    @staticmethod
    def _load_report(path: Path) -> dict[str, Any] | None:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return report if isinstance(report, dict) else None

    def _emit(self, build: Build) -> None:
        resource = build.resource()
        self.emit_build(resource, {"buildId": build.id, "status": build.status})

    @staticmethod
    def _log(log_file: IO[str], line: str) -> None:
        log_file.write(f"{timestamp()} {line}\n")
        log_file.flush()


def _image_digest(tag: str) -> dict[str, str]:
    """Cloud Build's results.images entry for an image built here."""
    inspect = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return {"name": tag, "digest": inspect.stdout.strip()}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill PROCESS and everything it started, and wait until they are gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def _failure_detail(failures: list[dict[str, Any]]) -> str:
    """`tests/2.ipynb cell 3 (In [2]), line 2: KeyError: 'x'`, as the runner prints it."""
    from bot.runner.notebook_tests import cell_position

    parts = []
    for notebook in failures[:FAILURES_NAMED]:
        failure = notebook.get("failure") or {}
        where = notebook.get("path") or "?"
        position = cell_position(failure)
        if position:
            where += f" {position}"
        what = ": ".join(str(failure[k]) for k in ("ename", "evalue") if failure.get(k))
        parts.append(f"{where}: {what or notebook.get('status')}")
    more = len(failures) - FAILURES_NAMED
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
