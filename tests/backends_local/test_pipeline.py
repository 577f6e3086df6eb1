"""The local staging pipeline end to end, from a real git repository through the real
relay into a (fake) Slack: the Cloud Build events it emits, the version it records,
staging published on success only, and failures that name notebook, cell and line."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from google.cloud.devtools.cloudbuild_v1 import types as cloudbuild
from slack_sdk import WebClient

from bot.backends.local import LocalBackend
from bot.backends.local.git import GitRepo, GitSource
from bot.backends.local.pipeline import branch_name
from bot.bootstrap import build_runtime, job_handlers, make_differ
from bot.builds.relay import BuildRelay
from bot.config import load_config
from bot.domain.errors import BadInput
from bot.service.diff import Differ
from bot.service.jobs import JobWorker
from bot.service.nbenv import Nbenv
from bot.slack.notifications import SlackNotifier
from bot.slack.outbox import OutboxSender
from bot.store.uow import Store
from tests.backends_local.conftest import CHANNEL, local_config_text
from tests.conftest import IMAGE, OWNER, USER
from tests.support.gitrepo import (
    BROKEN_NOTEBOOK,
    BROKEN_WHERE,
    NOTEBOOK_TEXT_OK,
    ImageRepo,
    notebook,
)
from tests.support.slack_api import FakeSlackApi

TOKEN = "xoxb-local-pipeline"
LOCAL_STEP = "test-notebooks-in-local-python"


@dataclass
class Stack:
    """The bot as `backend: local` runs it, with the build events also kept for asserting."""

    nbenv: Nbenv
    store: Store
    worker: JobWorker
    backend: LocalBackend
    slack: FakeSlackApi
    events: list[dict[str, Any]]
    attributes: list[dict[str, str]]
    make_backend: Callable[..., LocalBackend]

    def build(self, ref: str | None = None) -> dict[str, Any]:
        """`/nbenv build IMAGE [REF]` by the owner, then the job worker runs it."""
        self.events.clear()
        self.attributes.clear()
        self.nbenv.handle(OWNER, f"build {IMAGE}" + (f" {ref}" if ref else ""))
        self.worker.run_until_idle()
        return self.events[-1]

    def staging(self) -> str | None:
        return self.nbenv.handle(OWNER, f"status {IMAGE}").data["environments"]["staging"]

    def thread_texts(self, sha: str) -> list[str]:
        """The build thread of SHA in the image's channel: root first, then the replies."""
        messages = self.slack.messages(CHANNEL)
        roots = [m for m in messages.values() if not m.is_reply and sha[:7] in m.text]
        assert roots, f"no thread for {sha[:7]} in {[m.text for m in messages.values()]}"
        return [m.text for m in self.slack.thread(CHANNEL, roots[0].ts)]


@contextlib.contextmanager
def running_stack(config_file: Path, database_url: str, home: Path) -> Iterator[Stack]:
    with FakeSlackApi(token=TOKEN) as slack:
        runtime = build_runtime(str(config_file), database_url)
        sender = OutboxSender(runtime.store, WebClient(token=TOKEN, base_url=slack.base_url))
        events: list[dict[str, Any]] = []
        attributes: list[dict[str, str]] = []

        def emit_build(build: dict[str, Any], attrs: dict[str, str]) -> object:
            # A JSON round trip: the relay must get what Pub/Sub would carry, nothing more.
            events.append(json.loads(json.dumps(build)))
            attributes.append(dict(attrs))
            return relay.handle_build(events[-1], attrs)

        def make_backend(**options: Any) -> LocalBackend:
            return LocalBackend(
                runtime.config,
                home,
                emit_build=emit_build,
                emit_report=lambda *args: relay.handle_report(*args),
                use_docker=False,
                **options,
            )

        backend = make_backend()
        # The backend is given at construction, as bootstrap gives it; the relay that
        # the backend reports to is made from the same app.
        nbenv = Nbenv(
            runtime.config,
            runtime.store,
            backend,
            make_differ(runtime.config),
            notifier=SlackNotifier(),
        )
        relay = BuildRelay(nbenv, sender)
        worker = JobWorker(runtime.store, job_handlers(nbenv), notifier=SlackNotifier())
        yield Stack(nbenv, runtime.store, worker, backend, slack, events, attributes, make_backend)


@pytest.fixture
def stack(local_config_file: Path, sqlite_url: str, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(local_config_file, sqlite_url, tmp_path / "home") as running:
        yield running


@pytest.fixture
def stack_on_each_database(local_config_file: Path, db_url: str, tmp_path: Path) -> Iterator[Stack]:
    """SQLite and PostgreSQL: the relay's row locks and JSON reports behave alike."""
    with running_stack(local_config_file, db_url, tmp_path / "home") as running:
        yield running


def assert_cloud_build_shaped(event: dict[str, Any]) -> None:
    """Cloud Build's own Build message parses it, refusing any field Cloud Build lacks."""
    parsed = cloudbuild.Build.from_json(json.dumps(event), ignore_unknown_fields=False)
    assert parsed.id == event["id"]


def at_staging_tip(repo: ImageRepo, label: str) -> str:
    """Move the staging branch to the commit LABEL (as a push would): its SHA."""
    sha = repo.sha(label)
    repo.git("update-ref", "refs/heads/staging", sha)
    return sha


def test_a_passing_staging_commit_is_built_recorded_and_published(
    stack_on_each_database: Stack, repo: ImageRepo
) -> None:
    stack = stack_on_each_database
    sha = at_staging_tip(repo, "upgrade")

    final = stack.build()  # the staging branch

    # The events: one build, QUEUED → WORKING (per step) → SUCCESS, each a Build resource.
    for event in stack.events:
        assert_cloud_build_shaped(event)
    assert {event["id"] for event in stack.events} == {final["id"]}
    assert [e["status"] for e in stack.events] == ["QUEUED", "WORKING", "WORKING", "SUCCESS"]
    assert [[s["status"] for s in e["steps"]] for e in stack.events] == [
        ["QUEUED", "QUEUED"],
        ["WORKING", "QUEUED"],
        ["SUCCESS", "WORKING"],
        ["SUCCESS", "SUCCESS"],
    ]
    assert [s["id"] for s in final["steps"]] == ["checkout", LOCAL_STEP]
    assert stack.attributes[-1] == {"buildId": final["id"], "status": "SUCCESS"}
    assert final["substitutions"] == {
        "COMMIT_SHA": sha,
        "SHORT_SHA": sha[:7],
        "BRANCH_NAME": "staging",
        "REF_NAME": "staging",
        "REPO_NAME": "repo",
        "_IMAGE_NAME": IMAGE,
        "_REQUESTED_BY": OWNER,
        "_COMMIT_SUBJECT": "Move to TF 2.15 and upgrade nltk",
    }
    assert final["createTime"] <= final["startTime"] <= final["finishTime"]
    for step in final["steps"]:
        assert final["startTime"] <= step["timing"]["startTime"] <= step["timing"]["endTime"]
    assert "failureInfo" not in final
    # It says where the tests ran: no Docker engine, so in this Python environment.
    assert "No Docker engine answered" in final["warnings"][0]["text"]
    log = Path(urlparse(final["logUrl"]).path)
    assert final["logUrl"].startswith("file://")
    log_text = log.read_text()
    assert "No Docker engine answered" in log_text
    assert "2 passed" in log_text

    # The version is recorded with its report and package manifest.
    versions = {v["sha"]: v for v in stack.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}
    assert versions[sha]["tests_passed"] is True
    assert versions[sha]["notebooks"] == {"passed": 2, "total": 2}
    with stack.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    assert version is not None and version.report is not None
    assert version.build_id == final["id"]
    assert version.subject == "Move to TF 2.15 and upgrade nltk"
    packages = {p["name"] for p in version.report["packages"]}
    assert {"nbclient", "sqlalchemy"} <= packages
    assert version.report["python"] == sys.version.split()[0]

    # Staging points at it, published by the build.
    staging = stack.staging()
    assert staging["sha"] == sha
    assert staging["updated_by"] == f"build:{final['id']}"

    # The thread: root updated in place to the result, steps shown, testers asked.
    texts = stack.thread_texts(sha)
    assert "SUCCESS" in texts[0]
    assert f"{LOCAL_STEP} ✓" in texts[0]
    assert "tests: 2/2 notebooks passed" in texts[0]
    assert any("now in staging" in text for text in texts[1:])


def test_a_failing_commit_leaves_staging_untouched_and_names_notebook_cell_and_line(
    stack: Stack, repo: ImageRepo
) -> None:
    break_sha = repo.tip("staging")
    at_staging_tip(repo, "upgrade")
    stack.build()
    good = stack.staging()["sha"]
    repo.git("update-ref", "refs/heads/staging", break_sha)

    final = stack.build()  # the staging branch: its tip breaks a notebook

    sha = repo.sha("break")
    assert final["substitutions"]["COMMIT_SHA"] == sha
    assert final["substitutions"]["BRANCH_NAME"] == "staging"
    assert final["substitutions"]["REF_NAME"] == "staging"
    assert [e["status"] for e in stack.events] == ["QUEUED", "WORKING", "WORKING", "FAILURE"]
    for event in stack.events:
        assert_cloud_build_shaped(event)
    where = f"notebooks/{IMAGE}/{BROKEN_NOTEBOOK} {BROKEN_WHERE}"
    assert final["failureInfo"] == {
        "type": "USER_BUILD_STEP",
        "detail": f"{where}: AssertionError: expected four words, got 3",
    }
    assert [s["status"] for s in final["steps"]] == ["SUCCESS", "FAILURE"]
    assert final["steps"][1]["exitCode"] == 1

    assert stack.staging()["sha"] == good
    versions = {v["sha"]: v for v in stack.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}
    assert versions[sha]["tests_passed"] is False
    assert versions[sha]["notebooks"] == {"passed": 1, "total": 2}

    texts = stack.thread_texts(sha)
    assert "FAILURE" in texts[0]
    failure = next(text for text in texts[1:] if "failed" in text)
    line = next(line for line in failure.splitlines() if BROKEN_NOTEBOOK in line)
    assert f"notebooks/{IMAGE}/{BROKEN_NOTEBOOK}" in line
    assert BROKEN_WHERE in line  # as the CLI prints it
    assert "AssertionError: expected four words, got 3" in line
    assert not any("now in staging" in text for text in texts)


def test_a_commit_off_the_staging_branch_is_recorded_but_not_published(
    stack: Stack, repo: ImageRepo
) -> None:
    repo.git("checkout", "--quiet", "-b", "experiment", repo.sha("initial"))
    sha = repo.commit("experiment", "Try something", {"notes.md": "an idea\n"})

    final = stack.build(sha)

    assert final["status"] == "SUCCESS"
    assert final["substitutions"]["BRANCH_NAME"] == ""
    assert stack.staging() is None
    with stack.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    assert version is not None and version.tests_passed


def test_a_build_of_an_explicit_sha_is_test_only_even_on_the_staging_branch(
    stack: Stack, repo: ImageRepo
) -> None:
    """The same on every backend: Cloud Build runs a trigger by `commitSha` with no
    BRANCH_NAME, so a SHA's SUCCESS publishes nothing; the owner is told so up front."""
    sha = repo.sha("upgrade")  # on the staging branch, behind its tip

    reply = stack.nbenv.handle(OWNER, f"build {IMAGE} {sha}")
    stack.worker.run_until_idle()

    assert "test only: the version and its test report are recorded" in reply.text
    assert "no environment moves (to publish, build the `staging` branch)" in reply.text
    final = stack.events[-1]
    assert final["status"] == "SUCCESS"
    assert final["substitutions"]["BRANCH_NAME"] == ""
    assert stack.staging() is None
    versions = {v["sha"]: v for v in stack.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}
    assert versions[sha]["tests_passed"] is True
    assert not any("now in staging" in text for text in stack.thread_texts(sha))

    branch = stack.nbenv.handle(OWNER, f"build {IMAGE}")
    assert "if it succeeds it is published to staging" in branch.text


def test_an_unknown_ref_is_refused_before_anything_happens(stack: Stack) -> None:
    with pytest.raises(BadInput, match="no branch, tag or commit 'no-such-branch' in "):
        stack.backend.run_build(IMAGE, "no-such-branch", OWNER)
    with pytest.raises(BadInput, match="not a branch, tag or commit"):
        stack.backend.run_build(IMAGE, "--upload-pack=evil", OWNER)

    assert stack.events == []
    assert stack.nbenv.handle(USER, f"versions {IMAGE}").data["items"] == []
    assert stack.slack.messages(CHANNEL) == {}


def test_a_commit_without_test_notebooks_fails_and_says_so(stack: Stack, repo: ImageRepo) -> None:
    repo.git("checkout", "--quiet", "-b", "no-tests", repo.sha("upgrade"))
    sha = repo.commit("no-tests", "Drop the tests", {f"{repo.folder}/tests": None})

    final = stack.build("no-tests")

    assert final["status"] == "FAILURE"
    assert final["failureInfo"] == {
        "type": "USER_BUILD_STEP",
        "detail": f"no test notebooks in notebooks/{IMAGE}/tests at {sha[:7]}",
    }
    assert [s["status"] for s in final["steps"]] == ["FAILURE", "QUEUED"]


def test_a_commit_without_the_image_folder_fails_to_fetch_its_source(
    stack: Stack, repo: ImageRepo
) -> None:
    repo.git("checkout", "--quiet", "-b", "moved", repo.sha("upgrade"))
    repo.git("mv", repo.folder, "notebooks/elsewhere")
    sha = repo.commit("moved", "Move the folder", {})

    final = stack.build(sha)

    assert final["failureInfo"]["type"] == "FETCH_SOURCE_FAILED"
    assert f"no folder notebooks/{IMAGE} in commit {sha[:7]}" in final["failureInfo"]["detail"]
    assert_cloud_build_shaped(final)


def test_branch_name_follows_the_ref(repo: ImageRepo) -> None:
    git = GitRepo(repo.path)
    repo.git("tag", "v1", repo.sha("upgrade"))
    repo.git("checkout", "--quiet", "-b", "side", repo.sha("initial"))
    side = repo.commit("side", "A side commit", {"side.txt": "x\n"})

    assert branch_name(git, "staging") == "staging"
    assert branch_name(git, "main") == "main"
    assert branch_name(git, "side") == "side"
    # Not a branch: test only, as a Cloud Build trigger run by tag or commit SHA.
    assert branch_name(git, "v1") == ""
    assert branch_name(git, repo.sha("upgrade")[:8]) == ""
    assert branch_name(git, side) == ""


def test_nbenv_build_from_the_command_line(
    local_config_file: Path, tmp_path: Path, repo: ImageRepo
) -> None:
    """`nbenv build` as an operator types it: the composition root wires relay and backend."""
    env = dict(os.environ)
    env.update(
        {
            "NBENV_CONFIG": str(local_config_file),
            "NBENV_HOME": str(tmp_path / "cli-home"),
            # No Docker engine listens here, wherever the tests run: the local-Python path.
            "DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}",
        }
    )
    env.pop("NBENV_DATABASE_URL", None)

    def nbenv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot", "--as", OWNER, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    at_staging_tip(repo, "upgrade")
    built = nbenv("build", IMAGE)
    assert built.returncode == 0, built.stderr
    assert f"build of {IMAGE}" in built.stdout

    status = nbenv("status", IMAGE, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["environments"]["staging"]["sha"] == repo.sha("upgrade")
    builds = list((tmp_path / "cli-home" / "builds").iterdir())
    assert len(builds) == 1
    assert "No Docker engine answered" in (builds[0] / "build.log").read_text()

    diff = nbenv("diff", IMAGE, repo.sha("initial")[:7], "staging")
    assert diff.returncode != 0  # the initial commit was never built: not a known version
    assert "has no version" in diff.stderr


def running_in(folder: Path) -> list[int]:
    """PIDs of processes that name FOLDER on their command line or work inside it."""
    pids = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (process / "cmdline").read_bytes()
            cwd = Path(os.readlink(process / "cwd"))
        except OSError:
            continue
        if str(folder).encode() in cmdline or cwd.is_relative_to(folder):
            pids.append(int(process.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to see kernels")
def test_a_build_that_overruns_times_out_and_leaves_no_kernel_behind(
    stack: Stack, repo: ImageRepo
) -> None:
    repo.git("checkout", "--quiet", "-b", "slow", repo.sha("upgrade"))
    sha = repo.commit(
        "slow",
        "A notebook that hangs",
        {f"{repo.folder}/tests/03_hangs.ipynb": notebook("import time\ntime.sleep(120)")},
    )
    backend = stack.make_backend(build_timeout_s=4)

    final = backend.run_build(IMAGE, "slow", OWNER)

    assert final["status"] == "TIMEOUT"
    assert final["timeout"] == "4s"
    assert final["statusDetail"] == "build timed out after 4 s"
    assert [s["status"] for s in final["steps"]] == ["SUCCESS", "TIMEOUT"]
    assert_cloud_build_shaped(final)
    assert stack.staging() is None
    # The runner and the kernels it started are gone with it.
    workdir = Path(urlparse(final["logUrl"]).path).parent
    assert running_in(workdir) == []
    texts = stack.thread_texts(sha)
    assert "TIMEOUT" in texts[0]


def test_a_repository_given_by_url_is_mirrored_and_fetched_before_each_build(
    tmp_path: Path, repo: ImageRepo, sqlite_url: str
) -> None:
    config_file = tmp_path / "by-url.yaml"
    config_file.write_text(local_config_text(repo.path.as_uri()), encoding="utf-8")
    home = tmp_path / "home"
    # The diff makes the mirror first, at the history as it is now.
    differ = Differ(GitSource(load_config(config_file), home))
    assert differ(IMAGE, repo.sha("initial"), repo.sha("upgrade"), None, None)["base_image"][
        "changed"
    ]
    # Then the staging branch moves on upstream: a fix for the broken notebook.
    fix = repo.commit(
        "fix",
        "Expect three words again",
        {f"{repo.folder}/{BROKEN_NOTEBOOK}": NOTEBOOK_TEXT_OK},
        branch="staging",
    )

    with running_stack(config_file, sqlite_url, home) as stack:
        final = stack.build()  # the staging branch, as the mirror fetches it now

        assert final["substitutions"]["COMMIT_SHA"] == fix
        assert final["status"] == "SUCCESS"
        assert final["source"]["gitSource"]["url"] == repo.path.as_uri()
        assert final["substitutions"]["REPO_NAME"] == "repo"
        assert stack.staging()["sha"] == fix
    mirrors = list((home / "repos").iterdir())
    assert len(mirrors) == 1 and mirrors[0].name.endswith(".git")


def test_a_build_that_cannot_start_or_fails_is_on_record_as_failed(
    stack_on_each_database: Stack, repo: ImageRepo
) -> None:
    stack = stack_on_each_database
    repo.git("checkout", "--quiet", "main")
    repo.git("branch", "--quiet", "-D", "staging")

    stack.nbenv.handle(OWNER, f"build {IMAGE}")
    stack.worker.run_until_idle()

    history = stack.nbenv.handle(USER, f"history {IMAGE}")
    assert [(h["action"], h["outcome"]) for h in history.data["items"]] == [  # newest first
        ("build", "failed"),
        ("build", "ok"),  # queued
    ]
    assert "no branch, tag or commit 'staging'" in history.data["items"][0]["details"]["reason"]
    assert "build (FAILED): no branch, tag or commit 'staging'" in history.text

    # A build that starts and then fails is on record under its commit, with the reason.
    repo.git("checkout", "--quiet", "-b", "moved", repo.sha("upgrade"))
    repo.git("mv", repo.folder, "notebooks/elsewhere")
    sha = repo.commit("moved", "Move the folder", {})
    stack.build(sha)
    failed = stack.nbenv.handle(USER, f"history {IMAGE}").data["items"][0]  # the newest
    assert (failed["action"], failed["outcome"], failed["sha"]) == ("build", "failed", sha)
    assert f"no folder notebooks/{IMAGE} in commit {sha[:7]}" in failed["details"]["reason"]
