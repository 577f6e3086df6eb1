"""The Cloud Build pipelines: well-formed, every substitution defined, every file there."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.builds.pipeline import (
    BUILTINS,
    REPO_ROOT,
    load,
    run_step,
    step,
    strings,
    substitute,
    values,
    variables,
    workspace,
)

PIPELINES = ["staging.yaml", "production.yaml"]
# Cloud Build's build config schema (cloud.google.com/build/docs/build-config-file-schema).
TOP_LEVEL = {
    "steps",
    "timeout",
    "queueTtl",
    "logsBucket",
    "options",
    "substitutions",
    "tags",
    "serviceAccount",
    "secrets",
    "availableSecrets",
    "artifacts",
    "images",
}
STEP_KEYS = {
    "name",
    "args",
    "env",
    "dir",
    "id",
    "waitFor",
    "entrypoint",
    "secretEnv",
    "volumes",
    "timeout",
    "script",
    "allowFailure",
    "allowExitCodes",
    "automapSubstitutions",
}
SHA_IMAGE = "${_REGISTRY}/${_IMAGE_NAME}:${COMMIT_SHA}"
PROJECT_DIRS = ("bot/", "config/", "notebooks/", "functions/")


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_is_a_valid_build_config(name: str) -> None:
    config = load(name)

    assert set(config) <= TOP_LEVEL
    ids = [s.get("id") for s in config["steps"]]
    assert all(ids) and len(ids) == len(set(ids))
    for spec in config["steps"]:
        assert set(spec) <= STEP_KEYS, spec
        assert isinstance(spec["name"], str) and spec["name"]
        assert all(isinstance(arg, str) for arg in spec.get("args", []))
        assert set(spec.get("waitFor", [])) <= {"-", *ids}
    assert config["timeout"].endswith("s")
    assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"


@pytest.mark.parametrize("name", PIPELINES)
def test_every_substitution_used_is_defined_and_every_defined_one_used(name: str) -> None:
    config = load(name)
    declared = set(config.get("substitutions") or {})
    used = {
        v
        for text in strings(config["steps"]) + strings(config.get("images"))
        for v in variables(text)
    }
    used |= {v for text in strings(config.get("substitutions")) for v in variables(text)}

    assert used - BUILTINS - declared == set()
    assert declared <= used
    assert all(key.startswith("_") for key in declared)  # Cloud Build's rule for user keys
    assert "_IMAGE_NAME" in declared and "COMMIT_SHA" in used
    if any(variables(str(v)) for v in (config.get("substitutions") or {}).values()):
        assert config["options"]["dynamicSubstitutions"] is True


def test_staging_builds_pushes_and_tests_the_sha_image() -> None:
    config = load("staging.yaml")

    assert config["images"] == [SHA_IMAGE]
    assert f"--tag={SHA_IMAGE}" in step(config, "build")["args"]
    assert step(config, "push")["args"] == ["push", SHA_IMAGE]
    # The notebooks run inside the image that was built, not in a builder.
    assert step(config, "run-tests")["name"] == SHA_IMAGE
    order = [s["id"] for s in config["steps"]]
    assert order.index("build") < order.index("push") < order.index("run-tests")
    # The report leaves before the step that fails the build.
    assert order.index("run-tests") < order.index("deliver-report") < order.index("tests")
    assert order[-1] == "tests"


def test_production_checks_the_tested_image_without_rebuilding() -> None:
    config = load("production.yaml")

    assert "images" not in config
    texts = " ".join(strings(config["steps"]))
    assert "docker build" not in texts and SHA_IMAGE in texts
    assert "git merge --ff-only" in texts


def project_paths(config: dict[str, Any], image: str) -> set[str]:
    subs = values(config, _IMAGE_NAME=image)
    found = set()
    for text in strings(config["steps"]):
        for word in shlex.split(substitute(text, subs).replace("\\\n", " "), posix=True):
            for part in word.split("="):
                path = part.removeprefix("/workspace/")
                if path.startswith(PROJECT_DIRS):
                    found.add(path)
    return found


@pytest.mark.parametrize("name", PIPELINES)
def test_every_file_of_this_project_they_use_exists(name: str) -> None:
    images = sorted(p.name for p in (REPO_ROOT / "notebooks").iterdir() if p.is_dir())
    assert images
    for image in images:
        paths = project_paths(load(name), image)
        missing = [p for p in sorted(paths) if not (REPO_ROOT / p).exists()]
        assert missing == [], f"{name} for {image}"
        if name == "staging.yaml":
            assert {
                "bot/runner/notebook_tests.py",
                "config/cloudbuild/publish_report.py",
                f"notebooks/{image}",
                f"notebooks/{image}/tests",
            } <= paths
            assert (REPO_ROOT / "notebooks" / image / "Dockerfile").is_file()


def _help(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / script), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def test_the_commands_they_call_accept_the_options_given() -> None:
    config = load("staging.yaml")
    subs = values(config, _IMAGE_NAME="nlp.keras-batch")
    runner = shlex.split(
        substitute(step(config, "run-tests")["args"][1], subs).replace("\\\n", " ")
    )
    runner = runner[: runner.index("echo")] if "echo" in runner else runner
    deliver = step(config, "deliver-report")["args"]

    runner_help = _help("bot/runner/notebook_tests.py")
    assert all(flag in runner_help for flag in runner if flag.startswith("--"))
    publish_help = _help("config/cloudbuild/publish_report.py")
    assert all(arg.split("=")[0] in publish_help for arg in deliver if arg.startswith("--"))


# -- the test steps, run here --------------------------------------------------------------


def test_failing_notebook_is_reported_then_fails_the_build(tmp_path: Path) -> None:
    config = load("staging.yaml")
    image = "nlp.pipeline-test"
    root = workspace(
        tmp_path,
        image,
        {
            "01_ok.ipynb": ["x = 1", "assert x == 1"],
            "02_broken.ipynb": ["import json", "data = {}\nvalue = data['missing']"],
        },
    )
    subs = values(config, _IMAGE_NAME=image, _TEST_JOBS="2", _CELL_TIMEOUT="120")

    tests = run_step(config, "run-tests", root, subs)
    assert tests.returncode == 0, tests.stderr  # the verdict waits for the report
    report = json.loads((root / "report.json").read_text())
    statuses = {Path(n["path"]).name: n["status"] for n in report["notebooks"]}
    assert statuses == {"01_ok.ipynb": "passed", "02_broken.ipynb": "failed"}
    failure = next(n for n in report["notebooks"] if n["status"] == "failed")["failure"]
    assert (failure["cell"], failure["line"], failure["ename"]) == (2, 2, "KeyError")
    assert (root / "tests.exit").read_text().strip() == "1"

    verdict = run_step(config, "tests", root, subs)
    assert verdict.returncode == 1
    assert "test notebooks failed (runner exit status 1)" in verdict.stderr

    (root / "tests.exit").write_text("0\n")
    assert run_step(config, "tests", root, subs).returncode == 0
    (root / "tests.exit").unlink()
    assert run_step(config, "tests", root, subs).returncode == 1  # no verdict: fail safe


def test_no_report_means_nothing_to_deliver(tmp_path: Path) -> None:
    config = load("staging.yaml")
    root = workspace(tmp_path, "nlp.none", {})
    subs = values(config, _IMAGE_NAME="nlp.none")

    result = run_step(config, "deliver-report", root, subs, env={"PUBSUB_EMULATOR_HOST": "x:1"})

    assert result.returncode == 0
    assert "no test report to deliver" in result.stderr


class _PubSubWithItsLimit:
    """Pub/Sub's REST `topics.publish` at the wire, refusing what the real one refuses:
    a request over 10 MB (cloud.google.com/pubsub/quotas#resource_limits)."""

    LIMIT = 10_000_000

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        published: list[dict[str, Any]] = []
        self.published = published

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if len(body) > _PubSubWithItsLimit.LIMIT:
                    answer, status = {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}, 400
                else:
                    published.extend(json.loads(body)["messages"])
                    answer, status = {"messageIds": [str(len(published))]}, 200
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def report(self, index: int = -1) -> dict[str, Any]:
        import base64

        return json.loads(base64.b64decode(self.published[index]["data"]))


def test_a_notebook_printing_megabytes_still_gets_its_report_delivered(tmp_path: Path) -> None:
    """The runner caps the report; publish_report cuts one that is still too big (an
    older runner's) instead of having Pub/Sub refuse it, and the relay accepts both."""
    from bot.builds.report import check_report, summarize

    config = load("staging.yaml")
    image = "nlp.loud"
    root = workspace(
        tmp_path,
        image,
        {"loud.ipynb": ["print('x' * 6_000_000)", "raise ValueError('y' * 9_000_000)"]},
    )
    subs = values(config, _IMAGE_NAME=image, _TEST_JOBS="1", _CELL_TIMEOUT="120")
    pubsub = _PubSubWithItsLimit()
    try:
        assert run_step(config, "run-tests", root, subs).returncode == 0
        delivered = run_step(
            config, "deliver-report", root, subs, env={"PUBSUB_EMULATOR_HOST": pubsub.host}
        )
        assert delivered.returncode == 0, delivered.stderr
        first = check_report(pubsub.report())
        (failure,) = summarize(first, "b1")["failures"]
        assert (failure["cell"], failure["line"], failure["ename"]) == (2, 1, "ValueError")

        # A report as a runner without the cap wrote it: 9 MB of message.
        old = json.loads((root / "report.json").read_text())
        old["notebooks"][0]["failure"]["evalue"] = "y" * 9_000_000
        (root / "report.json").write_text(json.dumps(old))
        delivered = run_step(
            config, "deliver-report", root, subs, env={"PUBSUB_EMULATOR_HOST": pubsub.host}
        )
        assert delivered.returncode == 0, delivered.stderr
        second = check_report(pubsub.report())
        assert second["truncated"].startswith("the report was")
        assert second["notebooks"][0]["status"] == "failed"
        assert second["notebooks"][0]["failure"]["evalue"].endswith("characters cut]")
    finally:
        pubsub.server.shutdown()
        pubsub.server.server_close()
