"""The deploy: `deploy/setup.sh` (dry run and real run against a recording `gcloud`), every
command and flag checked against the installed Cloud SDK, and the root Dockerfile."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "deploy" / "setup.sh"
REPOSITORY = "projects/my-project/locations/europe-west4/connections/github/repositories/nb"
CLI_TREE = Path("/usr/lib/google-cloud-sdk/data/cli/gcloud_completions.py")
BOT = "nbenv-bot@my-project.iam.gserviceaccount.com"
RELAY = "nbenv-relay@my-project.iam.gserviceaccount.com"
BUILD = "nbenv-build@my-project.iam.gserviceaccount.com"
NOTEBOOK = "nbenv-notebook@my-project.iam.gserviceaccount.com"
PUSH = "nbenv-push@my-project.iam.gserviceaccount.com"

CONFIG = f"""
backend: gcp
teams:
  nlp: {{owners: [U01OWNER], testers: [U02TESTER]}}
images:
  nlp.keras-batch: {{team: nlp, channel: C01NLP}}
  vision.pytorch-gpu:
    team: nlp
    channel: C01NLP
    source: {{staging_branch: vision-staging, production_branch: release.v2}}
gcp:
  project: my-project
  region: europe-west4
  registry: europe-west4-docker.pkg.dev/my-project/notebooks
  jobs_audience: nbenv-jobs
  jobs_service_account: {PUSH}
  triggers:
    nlp.keras-batch: {{staging: nlp-staging}}
"""


@pytest.fixture(scope="module")
def config() -> Any:
    # The config ships in the bot's image, so the script wants it inside the repository.
    path = ROOT / "build" / "test-deploy" / "nbenv.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(CONFIG), encoding="utf-8")
    yield path
    path.unlink()


def _setup(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SETUP), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def dry_run(config: Path) -> str:
    result = _setup("--config", str(config), "--repository", REPOSITORY, "--dry-run")
    assert result.returncode == 0, result.stderr
    return result.stdout


def _commands(script: str) -> list[list[str]]:
    """Every simple command the script runs, command substitutions included, in order."""
    found: list[list[str]] = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "set ", "echo ", ": ")):
            continue
        line = _substitute(line, found)
        line = re.sub(r"\s*(?:\d?>&\d|>\s*/dev/null)", "", line)
        for part in re.split(r"\s*(?:\|\||&&|\||;)\s*", line):
            found.append(shlex.split(part))
    return found


def _substitute(line: str, found: list[list[str]]) -> str:
    """LINE with each `$(…)` replaced by SUBSTITUTED; the commands inside go to FOUND."""
    while (start := line.find("$(")) >= 0:
        depth, quoted, end = 0, False, start + 1
        for end in range(start + 1, len(line)):
            char = line[end]
            if char == "'":
                quoted = not quoted
            elif not quoted and char == "(":
                depth += 1
            elif not quoted and char == ")":
                depth -= 1
                if depth == 0:
                    break
        inner = _substitute(line[start + 2 : end], found)  # nested ones run first
        found.append(shlex.split(inner))
        line = line[:start] + "SUBSTITUTED" + line[end + 1 :]
    return line


def _gcloud(script: str) -> list[list[str]]:
    commands = _commands(script)
    others = {c[0] for c in commands if c[0] != "gcloud"}
    assert others <= {"printf"}, f"commands other than gcloud: {others}"
    return [c[1:] for c in commands if c[0] == "gcloud"]


def _flag(command: list[str], name: str) -> str | None:
    for word in command:
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    return None


def test_the_dry_run_prints_every_step_in_order_and_runs_nothing(dry_run, config, tmp_path) -> None:
    steps = re.findall(r"==> \d+\. (.+?)'?$", dry_run, flags=re.M)
    assert steps == [
        "Enable the APIs",
        "Artifact Registry repository for the notebook images",
        "Service accounts, one per job",
        "Pub/Sub topics: build events, the job queue, test reports, dead letters",
        "Secrets in Secret Manager (values from the environment, never printed)",
        "Cloud SQL for PostgreSQL: instance, database, user",
        "Least IAM roles of each service account",
        "The bot on Cloud Run (root Dockerfile), its URL for Slack",
        "The build relay: Cloud Functions (2nd gen) on the build and report topics",
        "Dead letters: the relay'\"'\"'s trigger subscriptions retry a bounded number of times",
        "The job queue'\"'\"'s authenticated push subscription to /pubsub/jobs",
        "Cloud Build triggers: each image'\"'\"'s staging and production branch",
    ]
    # A gcloud first on PATH that records its calls: a dry run makes none.
    log = tmp_path / "calls"
    shim = _gcloud_shim(tmp_path, log)
    result = _setup(
        "--config", str(config), "--repository", REPOSITORY, "--dry-run",
        env={"PATH": f"{shim}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert result.stdout == dry_run
    assert not log.exists()


def test_the_bot_the_relay_and_the_push_subscription_are_deployed_as_the_contracts_say(
    dry_run,
) -> None:
    commands = _gcloud(dry_run)
    (bot,) = [c for c in commands if c[:2] == ["run", "deploy"]]
    assert bot[2] == "nbenv" and _flag(bot, "--source") == "."
    assert _flag(bot, "--service-account") == BOT
    assert _flag(bot, "--set-secrets") == (
        "SLACK_BOT_TOKEN=slack-bot-token:latest,SLACK_SIGNING_SECRET=slack-signing-secret:latest,"
        "NBENV_DATABASE_URL=nbenv-db:latest"
    )
    assert _flag(bot, "--set-env-vars") == "NBENV_CONFIG=build/test-deploy/nbenv.yaml"
    assert _flag(bot, "--add-cloudsql-instances") == "my-project:europe-west4:nbenv"

    functions = [c for c in commands if c[:2] == ["functions", "deploy"]]
    assert [(c[2], _flag(c, "--trigger-topic")) for c in functions] == [
        ("nbenv-relay", "cloud-builds"),
        ("nbenv-report-relay", "nbenv-reports"),
    ]
    for function in functions:
        assert "--gen2" in function and "--retry" in function
        assert _flag(function, "--entry-point") == "relay_build_status"
        assert _flag(function, "--set-build-env-vars") == "GOOGLE_FUNCTION_SOURCE=functions/main.py"
        assert _flag(function, "--service-account") == RELAY

    (push,) = [
        c for c in commands if c[:4] == ["pubsub", "subscriptions", "create", "nbenv-jobs-push"]
    ]
    assert _flag(push, "--topic") == "nbenv-jobs"
    assert _flag(push, "--push-auth-service-account") == PUSH
    assert _flag(push, "--push-auth-token-audience") == "nbenv-jobs"
    assert _flag(push, "--push-endpoint") == "SUBSTITUTED/pubsub/jobs"
    describe = next(c for c in commands if c[:3] == ["run", "services", "describe"])
    assert describe[:5] == ["run", "services", "describe", "nbenv", "--region=europe-west4"]


def test_the_relay_subscriptions_park_what_keeps_failing_in_a_dead_letter_topic(
    dry_run,
) -> None:
    commands = _gcloud(dry_run)
    topic = ["pubsub", "topics", "create", "nbenv-dead-letters"]
    assert any(c[:4] == topic for c in commands)
    # Messages published to a topic without a subscription are lost: one keeps them.
    (kept,) = [
        c for c in commands if c[:4] == ["pubsub", "subscriptions", "create", "nbenv-dead-letters"]
    ]
    assert _flag(kept, "--topic") == "nbenv-dead-letters"
    assert _flag(kept, "--message-retention-duration") == "7d"

    # Eventarc creates each function's trigger subscription: the script looks it up
    # (function → its Eventarc trigger → the trigger's subscription), then updates it.
    updates = [c for c in commands if c[:3] == ["pubsub", "subscriptions", "update"]]
    assert len(updates) == 2
    for update in updates:
        assert update[3] == "SUBSTITUTED"
        assert _flag(update, "--dead-letter-topic") == "nbenv-dead-letters"
        assert 5 <= int(_flag(update, "--max-delivery-attempts") or 0) <= 10
    lookups = [c for c in commands if c[:2] == ["functions", "describe"]]
    assert [c[2] for c in lookups] == ["nbenv-relay", "nbenv-relay"] + ["nbenv-report-relay"] * 2
    for lookup in lookups:
        assert "--v2" in lookup and _flag(lookup, "--format") == "value(eventTrigger.trigger)"
    triggers = [c for c in commands if c[:3] == ["eventarc", "triggers", "describe"]]
    assert len(triggers) == 4
    for trigger in triggers:
        assert trigger[3] == "SUBSTITUTED"
        assert _flag(trigger, "--format") == "value(transport.pubsub.subscription)"
    # After the functions exist (their triggers are made by the deploy).
    script = dry_run.splitlines()
    first_update = next(i for i, line in enumerate(script) if "subscriptions update" in line)
    last_deploy = max(i for i, line in enumerate(script) if "functions deploy" in line)
    assert first_update > last_deploy


def test_each_image_gets_a_staging_and_a_production_trigger(dry_run) -> None:
    triggers = [c for c in _gcloud(dry_run) if c[:4] == ["builds", "triggers", "create", "github"]]
    seen = {
        (_flag(t, "--name"), _flag(t, "--branch-pattern"), _flag(t, "--build-config")): t
        for t in triggers
    }
    assert set(seen) == {
        ("nlp-staging", "^staging$", "config/cloudbuild/staging.yaml"),
        ("nbenv-nlp-keras-batch-production", "^main$", "config/cloudbuild/production.yaml"),
        ("nbenv-vision-pytorch-gpu-staging", "^vision-staging$", "config/cloudbuild/staging.yaml"),
        (
            "nbenv-vision-pytorch-gpu-production",
            "^release\\.v2$",
            "config/cloudbuild/production.yaml",
        ),
    }
    for trigger in triggers:
        substitutions = dict(s.split("=", 1) for s in _flag(trigger, "--substitutions").split(","))
        image = substitutions["_IMAGE_NAME"]
        assert substitutions["_REGISTRY"] == "europe-west4-docker.pkg.dev/my-project/notebooks"
        assert _flag(trigger, "--included-files") == f"notebooks/{image}/**"
        assert _flag(trigger, "--repository") == REPOSITORY
        assert _flag(trigger, "--service-account") == f"projects/my-project/serviceAccounts/{BUILD}"
        declared = yaml.safe_load(Path(ROOT, _flag(trigger, "--build-config")).read_text())
        assert set(substitutions) <= set(declared["substitutions"])  # only what the YAML uses
    assert "gcp.triggers in the config" in dry_run
    assert "#       production: nbenv-nlp-keras-batch-production" in dry_run


def test_every_service_account_gets_exactly_its_least_roles(dry_run) -> None:
    grants: set[tuple[str, str, str]] = set()
    for command in _gcloud(dry_run):
        if "add-iam-policy-binding" in command or "add-invoker-policy-binding" in command:
            verb = command.index(next(w for w in command if w.endswith("policy-binding")))
            target = " ".join(command[:verb]) + " " + command[verb + 1]
            member = (_flag(command, "--member") or "").removeprefix("serviceAccount:")
            grants.add((member, _flag(command, "--role") or "roles/run.invoker", target))
    member_pubsub_agent = {g for g in grants if "gcp-sa-pubsub" in g[0]}
    agent = "service-SUBSTITUTED@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert member_pubsub_agent == {
        (agent, "roles/iam.serviceAccountTokenCreator", f"iam service-accounts {PUSH}"),
        # It forwards dead letters: publishes them, acknowledges them on the source.
        (agent, "roles/pubsub.publisher", "pubsub topics nbenv-dead-letters"),
        (agent, "roles/pubsub.subscriber", "pubsub subscriptions SUBSTITUTED"),
    }
    assert grants - member_pubsub_agent == {
        (BOT, "roles/cloudsql.client", "projects my-project"),
        (BOT, "roles/cloudbuild.builds.editor", "projects my-project"),
        (BOT, "roles/notebooks.admin", "projects my-project"),
        (BOT, "roles/containeranalysis.occurrences.viewer", "projects my-project"),
        (BOT, "roles/artifactregistry.writer", "artifacts repositories notebooks"),
        (BOT, "roles/secretmanager.secretAccessor", "secrets slack-bot-token"),
        (BOT, "roles/secretmanager.secretAccessor", "secrets slack-signing-secret"),
        (BOT, "roles/secretmanager.secretAccessor", "secrets nbenv-db"),
        (BOT, "roles/pubsub.publisher", "pubsub topics nbenv-jobs"),
        (BOT, "roles/iam.serviceAccountUser", f"iam service-accounts {BUILD}"),
        (BOT, "roles/iam.serviceAccountUser", f"iam service-accounts {NOTEBOOK}"),
        (RELAY, "roles/cloudsql.client", "projects my-project"),
        (RELAY, "roles/eventarc.eventReceiver", "projects my-project"),
        (RELAY, "roles/artifactregistry.writer", "artifacts repositories notebooks"),
        (RELAY, "roles/secretmanager.secretAccessor", "secrets slack-bot-token"),
        (RELAY, "roles/secretmanager.secretAccessor", "secrets nbenv-db"),
        (RELAY, "roles/run.invoker", "functions nbenv-relay"),
        (RELAY, "roles/run.invoker", "functions nbenv-report-relay"),
        (BUILD, "roles/logging.logWriter", "projects my-project"),
        (BUILD, "roles/artifactregistry.writer", "artifacts repositories notebooks"),
        (BUILD, "roles/pubsub.publisher", "pubsub topics nbenv-reports"),
        (NOTEBOOK, "roles/artifactregistry.reader", "artifacts repositories notebooks"),
    }
    assert not re.search(r"roles/(owner|editor)\b", dry_run)


@cache
def _cli_tree() -> dict[str, Any] | None:
    if not CLI_TREE.is_file():
        return None
    spec = importlib.util.spec_from_file_location("gcloud_completions", CLI_TREE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STATIC_COMPLETION_CLI_TREE  # type: ignore[no-any-return]


def _check_against_sdk(words: list[str], tree: dict[str, Any]) -> list[str]:
    """What is wrong with `gcloud WORDS` according to the SDK's CLI tree."""
    node, path, problems = tree, ["gcloud"], []
    index = 0
    while index < len(words) and words[index] in (node.get("commands") or {}):
        node = node["commands"][words[index]]
        path.append(words[index])
        index += 1
    if node.get("commands"):
        return [f"{' '.join(path)} is a command group, not a command"]
    flags = {**tree["flags"], **node.get("flags", {})}
    rest = words[index:]
    while rest:
        word, rest = rest[0], rest[1:]
        if not word.startswith("--"):
            continue  # a positional argument
        name, has_value, value = word.partition("=")
        kind = flags.get(name)
        if kind is None and name.startswith("--no-") and flags.get("--" + name[5:]) == "bool":
            continue
        if kind is None:
            problems.append(f"{' '.join(path)}: no flag {name}")
        elif kind != "bool" and not has_value:
            value, rest = rest[0], rest[1:]
        if isinstance(kind, list) and value not in kind:
            problems.append(f"{' '.join(path)} {name}: {value!r} is not one of {kind}")
    return problems


@pytest.mark.skipif(
    _cli_tree() is None, reason="the Google Cloud SDK (its CLI tree) is not installed"
)
def test_every_gcloud_command_and_flag_exists_in_the_installed_sdk(dry_run) -> None:
    tree = _cli_tree()
    assert tree is not None
    problems = [p for words in _gcloud(dry_run) for p in _check_against_sdk(words, tree)]
    assert problems == []
    assert len(_gcloud(dry_run)) > 60


def _gcloud_shim(directory: Path, log: Path) -> Path:
    """A `gcloud` that records argv (and stdin for --data-file=-) and says nothing exists."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "gcloud"
    shim.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import json, sys
            args = sys.argv[1:]
            stdin = sys.stdin.read() if "--data-file=-" in args else None
            with open({str(log)!r}, "a") as log:
                log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
            if "describe" in args and args[:3] == ["run", "services", "describe"]:
                print("https://nbenv-abc123-ew.a.run.app")
            elif args[:2] == ["functions", "describe"]:
                print(f"projects/my-project/locations/europe-west4/triggers/{{args[2]}}-123")
            elif args[:3] == ["eventarc", "triggers", "describe"]:
                trigger = args[3].rsplit("/", 1)[-1]
                print(f"projects/my-project/subscriptions/eventarc-europe-west4-{{trigger}}-sub-1")
            elif args[:2] == ["projects", "describe"]:
                print("123456789")
            elif "describe" in args:
                sys.exit(1)  # not found: create it
            """
        )
    )
    shim.chmod(0o755)
    return bin_dir


def test_the_real_run_runs_what_the_dry_run_printed_and_pipes_the_secrets(
    dry_run, config, tmp_path
) -> None:
    log = tmp_path / "calls"
    shim = _gcloud_shim(tmp_path, log)
    secrets = {
        "SLACK_BOT_TOKEN": "xoxb-not-printed",
        "SLACK_SIGNING_SECRET": "signing-not-printed",
        "NBENV_DB_PASSWORD": "pw-not-printed",
    }

    result = _setup(
        "--config", str(config), "--repository", REPOSITORY,
        env={"PATH": f"{shim}:{os.environ['PATH']}", **secrets},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    ran = [c["args"] for c in calls]
    # What ran is what was printed, with the substitutions resolved by the shell; only
    # the `||` alternative of a creation that succeeded (set-password) did not run.
    resolved = {
        "https://nbenv-abc123-ew.a.run.app": "SUBSTITUTED",
        **{
            f"projects/my-project/subscriptions/eventarc-europe-west4-{f}-123-sub-1": "SUBSTITUTED"
            for f in ("nbenv-relay", "nbenv-report-relay")
        },
        **{
            f"projects/my-project/locations/europe-west4/triggers/{f}-123": "SUBSTITUTED"
            for f in ("nbenv-relay", "nbenv-report-relay")
        },
        "123456789": "SUBSTITUTED",
        "pw-not-printed": "$NBENV_DB_PASSWORD",
    }

    def signature(args: list[str]) -> str:
        text = " ".join(args)
        for value, placeholder in resolved.items():
            text = text.replace(value, placeholder)
        return text

    planned = Counter(signature(c) for c in _gcloud(dry_run))
    alternatives = Counter(signature(c) for c in _gcloud(dry_run) if "set-password" in c)
    assert Counter(signature(c) for c in ran) == planned - alternatives
    pipes = {c["args"][3]: c["stdin"] for c in calls if c["stdin"] is not None}
    assert pipes == {
        "slack-bot-token": "xoxb-not-printed",
        "slack-signing-secret": "signing-not-printed",
        "nbenv-db": "postgresql+psycopg://nbenv:pw-not-printed@/nbenv?host=/cloudsql/"
        "my-project:europe-west4:nbenv",
    }
    (push,) = [c for c in ran if c[:4] == ["pubsub", "subscriptions", "create", "nbenv-jobs-push"]]
    assert "--push-endpoint=https://nbenv-abc123-ew.a.run.app/pubsub/jobs" in push
    updated = {c[3] for c in ran if c[:3] == ["pubsub", "subscriptions", "update"]}
    assert updated == {
        "projects/my-project/subscriptions/eventarc-europe-west4-nbenv-relay-123-sub-1",
        "projects/my-project/subscriptions/eventarc-europe-west4-nbenv-report-relay-123-sub-1",
    }
    for value in secrets.values():
        assert value not in result.stdout + result.stderr
    assert "gcp section needs" in result.stdout


def test_a_failing_step_stops_the_run_with_a_clear_message(config, tmp_path) -> None:
    log = tmp_path / "calls"
    shim = _gcloud_shim(tmp_path, log)
    failing = shim / "gcloud"
    failing.write_text(failing.read_text() + "if args[:2] == ['pubsub', 'topics']: sys.exit(3)\n")

    result = _setup(
        "--config", str(config), "--repository", REPOSITORY,
        env={"PATH": f"{shim}:{os.environ['PATH']}", "SLACK_BOT_TOKEN": "x",
             "SLACK_SIGNING_SECRET": "y"},
    )  # fmt: skip

    assert result.returncode == 3
    assert result.stderr.strip().endswith("fix it and run again")
    assert not any("secrets" in line for line in log.read_text().splitlines())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--repository: expected the connected repository"),
        (["--repository", "github.com/x/y"], "--repository: expected the connected repository"),
        (["--repository", REPOSITORY, "--project", "Bad_Project"], "is not a Google Cloud project"),
        (["--repository", REPOSITORY, "--project", "other-project"], "differs from gcp.project"),
        # The triggers are made in gcp.region: the repository's connection must be there too.
        (
            ["--repository", REPOSITORY.replace("europe-west4", "us-central1")],
            "--repository: its connection is in region us-central1, but the Cloud Build "
            "triggers would be made in europe-west4 (gcp.region or --region)",
        ),
        (
            ["--repository", REPOSITORY, "--region", "europe-west1"],
            "its connection is in region europe-west4, but the Cloud Build triggers would be "
            "made in europe-west1",
        ),
    ],
)
def test_bad_input_is_one_line_and_prints_no_script(config, args, message) -> None:
    result = _setup("--config", str(config), *args, "--dry-run")

    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_a_config_that_is_not_for_gcp_is_refused(tmp_path) -> None:
    result = _setup(
        "--config", str(ROOT / "config" / "nbenv.yaml"), "--repository", REPOSITORY, "--dry-run"
    )

    assert result.returncode == 2
    assert "set `backend: gcp` and a `gcp:` section first" in result.stderr


def test_a_config_outside_the_repository_is_refused(tmp_path) -> None:
    outside = tmp_path / "nbenv.yaml"
    outside.write_text(textwrap.dedent(CONFIG))

    result = _setup("--config", str(outside), "--repository", REPOSITORY, "--dry-run")

    assert result.returncode == 2
    assert "must be inside the repository" in result.stderr


def test_the_dockerfile_builds_the_bot_from_what_it_copies(tmp_path) -> None:
    """No Docker engine here: read the Dockerfile, stage exactly what it COPYs, and build
    the package from that, as its `pip install --no-deps .` would."""
    instructions = [
        line.split(None, 1)
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert json.loads(dict(instructions)["CMD"]) == ["nbenv", "serve"]
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --requirement requirements.txt" in text
    context = tmp_path / "context"
    for kind, argument in instructions:
        if kind == "COPY":
            *sources, _ = argument.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                target = context / source
                if (ROOT / source).is_dir():
                    subprocess.run(["cp", "-r", str(ROOT / source), str(target)], check=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes((ROOT / source).read_bytes())
    # What `pip install .` builds: the package metadata and the files it installs.
    out = context / "out"
    out.mkdir()
    built = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "egg_info",
         f"--egg-base={out}", "build_py", f"--build-lib={out / 'lib'}"],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    installed = out / "lib" / "bot"
    for module in (
        "cli.py",
        "slack/serve.py",
        "backends/gcp/backend.py",
        "runner/notebook_tests.py",
    ):
        assert (installed / module).is_file(), module
    assert (installed / "store" / "migrations" / "versions" / "0001_initial.py").is_file()
    (entry_points,) = out.glob("*.egg-info/entry_points.txt")
    assert "nbenv = bot.cli:main" in entry_points.read_text()


def test_the_guide_grants_on_the_repository_exactly_what_the_dry_run_grants(dry_run) -> None:
    """docs/deploy.md step 7 and `setup.sh --dry-run` agree on the Artifact Registry roles,
    and neither grants the role that could delete tags (and images): nbenv never does."""
    ran = {
        ((_flag(c, "--member") or "").split(":")[1].split("@")[0], _flag(c, "--role"))
        for c in _gcloud(dry_run)
        if c[:3] == ["artifacts", "repositories", "add-iam-policy-binding"]
    }
    documented, account = set(), ""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for row in re.findall(r"^\|(.*)\|$", guide, flags=re.M):
        cells = [cell.strip() for cell in row.split("|")]
        account = cells[0].strip("`") or account
        if len(cells) == 4 and cells[2] == "repository `notebooks`":
            documented.add((account, cells[1].strip("`")))

    assert documented == ran
    assert ran == {
        ("nbenv-bot", "roles/artifactregistry.writer"),
        ("nbenv-relay", "roles/artifactregistry.writer"),
        ("nbenv-build", "roles/artifactregistry.writer"),
        ("nbenv-notebook", "roles/artifactregistry.reader"),
    }
    assert "repoAdmin" not in dry_run
    assert "no account needs `artifactregistry.tags.delete`" in " ".join(guide.split())
