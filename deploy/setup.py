#!/usr/bin/env python3
"""Set up nbenv on Google Cloud, from nothing to running: every step of docs/deploy.md.

    python3 deploy/setup.py --project P --repository CONNECTED_REPO [--dry-run]
    deploy/setup.sh …                                  (the same)

It reads config/nbenv.yaml (or --config) for the region, registry, topics, images and
their branches, and writes a shell script: APIs, the registry, service accounts and
their least IAM roles, secrets, Cloud SQL, topics, the bot on Cloud Run, the relay
functions and a dead-letter topic for their trigger subscriptions, the authenticated
push subscription, and a staging and a production Cloud Build trigger per image.
`--dry-run` prints that script; otherwise it runs it with bash, stopping at the first
failure. Creations are skipped when the thing exists, so running it again after fixing
a failure picks up where it stopped.

Secrets come from the environment at run time and are never printed:
SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, and NBENV_DB_PASSWORD (generated when unset).
Run it from the repository root: Cloud Run and the functions are built from it.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
APIS = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "compute.googleapis.com",
    "containeranalysis.googleapis.com",  # reading scan results (the plan's vulnerabilities)
    "containerscanning.googleapis.com",  # Artifact Analysis scans each pushed image
    "eventarc.googleapis.com",
    "iam.googleapis.com",
    "notebooks.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
]
# The relay's trigger subscriptions hand a message that failed this many deliveries to
# the dead-letter topic (Pub/Sub allows 5 to 100). With the 10 s to 600 s backoff that is
# about 40 minutes of retrying: a database outage of that length heals, poison does not.
MAX_DELIVERY_ATTEMPTS = 10
DEAD_LETTERS = "nbenv-dead-letters"  # topic and its pull subscription, for operators
SECRET_ENV = {
    "slack-bot-token": "SLACK_BOT_TOKEN",
    "slack-signing-secret": "SLACK_SIGNING_SECRET",
}


class SetupError(Exception):
    """Bad input: the message says what to fix."""


@dataclass
class Settings:
    project: str
    region: str
    repository: str  # Cloud Build 2nd-gen repository resource
    registry: str
    topics: dict[str, str]
    images: dict[str, dict[str, Any]]
    triggers: dict[str, dict[str, str]]
    jobs_audience: str
    service: str = "nbenv"
    sql_instance: str = "nbenv"
    sql_tier: str = "db-g1-small"
    config_file: str = "config/nbenv.yaml"
    legacy_environments: bool = False
    accounts: dict[str, str] = field(default_factory=dict)
    # gcp.google_accounts: the people instances are created for (Workbench instanceOwners).
    instance_owners: tuple[str, ...] = ()

    def account(self, name: str) -> str:
        return f"{name}@{self.project}.iam.gserviceaccount.com"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_settings(options: argparse.Namespace) -> Settings:
    config_path = Path(options.config)
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SetupError(f"{config_path}: config file not found") from None
    except yaml.YAMLError as error:
        raise SetupError(f"{config_path}: not valid YAML: {error}") from None
    gcp = config.get("gcp") or {}
    if config.get("backend") != "gcp" or not gcp:
        raise SetupError(f"{config_path}: set `backend: gcp` and a `gcp:` section first")
    project = options.project or gcp.get("project")
    if not project or not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", project):
        raise SetupError(f"--project: {project!r} is not a Google Cloud project ID")
    if gcp.get("project") and gcp["project"] != project:
        raise SetupError(
            f"--project {project} differs from gcp.project {gcp['project']} in {config_path}"
        )
    if not options.repository or not re.fullmatch(
        r"projects/[^/]+/locations/[^/]+/connections/[^/]+/repositories/[^/]+",
        options.repository,
    ):
        raise SetupError(
            "--repository: expected the connected repository, "
            "projects/P/locations/R/connections/C/repositories/NAME (see docs/deploy.md)"
        )
    inside = config_path.resolve()
    if ROOT not in inside.parents:
        raise SetupError(
            f"--config {config_path}: must be inside the repository ({ROOT}): "
            "it ships in the bot's image"
        )
    region = options.region or gcp.get("region") or "us-central1"
    # A trigger on a 2nd-gen repository lives in the region of the repository's connection:
    # gcloud creates it under projects/P/locations/REGION (`--region`; "Region must be
    # specified in 2nd gen repo; `global` is not supported", googlecloudsdk/command_lib/
    # builds/flags.py), and Cloud Build refuses a repository whose connection is elsewhere.
    # Say so now, not after the database and the bot are made.
    connection_region = options.repository.split("/")[3]
    if connection_region != region:
        raise SetupError(
            f"--repository: its connection is in region {connection_region}, but the Cloud "
            f"Build triggers would be made in {region} (gcp.region or --region), and a trigger "
            "must be in its repository connection's region: set gcp.region (or --region) to "
            f"{connection_region}, or connect the repository in {region} (docs/deploy.md, "
            "step 0)"
        )
    registry = gcp.get("registry") or f"{region}-docker.pkg.dev/{project}/notebooks"
    push_account = f"nbenv-push@{project}.iam.gserviceaccount.com"
    audience = gcp.get("jobs_audience")
    if not audience or gcp.get("jobs_service_account") != push_account:
        raise SetupError(
            f"{config_path}: set gcp.jobs_audience (e.g. nbenv-jobs) and "
            f"gcp.jobs_service_account: {push_account}, so that the bot verifies the pushes"
        )
    people = gcp.get("google_accounts") or {}
    if not isinstance(people, dict) or not all(
        isinstance(a, str) and re.fullmatch(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+", a)
        for a in people.values()
    ):
        raise SetupError(
            f"{config_path}: gcp.google_accounts: expected Slack user ID: Google account "
            "email, e.g. U01ABCDEF: alice@example.com"
        )
    topics = {"builds": "cloud-builds", "jobs": "nbenv-jobs", "reports": "nbenv-reports"}
    topics.update(gcp.get("topics") or {})
    return Settings(
        project=project,
        region=region,
        repository=options.repository,
        registry=registry,
        topics=topics,
        images=config.get("images") or {},
        triggers=gcp.get("triggers") or {},
        jobs_audience=audience,
        service=options.service,
        sql_instance=options.sql_instance,
        sql_tier=options.sql_tier,
        config_file=inside.relative_to(ROOT).as_posix(),
        legacy_environments=bool(gcp.get("mirror_legacy_environments")),
        instance_owners=tuple(sorted(set(people.values()))),
    )


# -- the script ---------------------------------------------------------------------------


class Script:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.steps = 0

    def step(self, title: str) -> None:
        self.steps += 1
        self.lines += ["", f"echo {shlex.quote(f'==> {self.steps}. {title}')}"]

    def run(self, *words: str) -> None:
        self.lines.append(shlex.join(words))

    def unless(self, check: list[str], *words: str) -> None:
        """WORDS, skipped when CHECK (a describe) succeeds: the thing exists already."""
        self.lines.append(f"{shlex.join(check)} >/dev/null 2>&1 || {shlex.join(words)}")

    def raw(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(["set -euo pipefail", *self.lines]) + "\n"


def plan(s: Settings) -> Script:
    p = ["--project", s.project]
    script = Script()
    host, _, rest = s.registry.partition("/")
    registry_location = host.removesuffix("-docker.pkg.dev")
    repository = rest.split("/")[1]
    where = [f"--location={registry_location}"]
    sql = f"{s.project}:{s.region}:{s.sql_instance}"
    bot, relay, build, push, notebook = (
        s.account(n)
        for n in ("nbenv-bot", "nbenv-relay", "nbenv-build", "nbenv-push", "nbenv-notebook")
    )

    script.step("Enable the APIs")
    script.run("gcloud", "services", "enable", *APIS, *p)

    script.step("Artifact Registry repository for the notebook images")
    script.unless(
        ["gcloud", "artifacts", "repositories", "describe", repository, *where, *p],
        "gcloud", "artifacts", "repositories", "create", repository,
        "--repository-format=docker", *where,
        "--description=nbenv notebook images", *p,
    )  # fmt: skip

    script.step("Service accounts, one per job")
    for name, what in [
        ("nbenv-bot", "nbenv bot (Cloud Run)"),
        ("nbenv-relay", "nbenv build relay (Cloud Functions)"),
        ("nbenv-build", "nbenv image builds (Cloud Build)"),
        ("nbenv-push", "nbenv job queue push (Pub/Sub)"),
        ("nbenv-notebook", "nbenv Workbench instances"),
    ]:
        script.unless(
            ["gcloud", "iam", "service-accounts", "describe", s.account(name), *p],
            "gcloud", "iam", "service-accounts", "create", name, f"--display-name={what}", *p,
        )  # fmt: skip

    script.step("Pub/Sub topics: build events, the job queue, test reports, dead letters")
    for topic in (s.topics["builds"], s.topics["jobs"], s.topics["reports"], DEAD_LETTERS):
        script.unless(
            ["gcloud", "pubsub", "topics", "describe", topic, *p],
            "gcloud", "pubsub", "topics", "create", topic, *p,
        )  # fmt: skip
    # A topic keeps nothing by itself: this subscription holds the dead letters for a week.
    script.unless(
        ["gcloud", "pubsub", "subscriptions", "describe", DEAD_LETTERS, *p],
        "gcloud", "pubsub", "subscriptions", "create", DEAD_LETTERS, f"--topic={DEAD_LETTERS}",
        "--message-retention-duration=7d", "--expiration-period=never", *p,
    )  # fmt: skip

    script.step("Secrets in Secret Manager (values from the environment, never printed)")
    script.raw(': "${NBENV_DB_PASSWORD:?set NBENV_DB_PASSWORD (setup.py generates one)}"')
    for secret in ("slack-bot-token", "slack-signing-secret", "nbenv-db"):
        script.unless(
            ["gcloud", "secrets", "describe", secret, *p],
            "gcloud", "secrets", "create", secret, "--replication-policy=automatic", *p,
        )  # fmt: skip
    for secret, variable in SECRET_ENV.items():
        script.raw(
            f'printf %s "${{{variable}:?set {variable}}}" | '
            + shlex.join(["gcloud", "secrets", "versions", "add", secret, "--data-file=-", *p])
        )
    url = f"postgresql+psycopg://nbenv:${{NBENV_DB_PASSWORD}}@/nbenv?host=/cloudsql/{sql}"
    script.raw(
        f'printf %s "{url}" | '
        + shlex.join(["gcloud", "secrets", "versions", "add", "nbenv-db", "--data-file=-", *p])
    )

    script.step("Cloud SQL for PostgreSQL: instance, database, user")
    script.unless(
        ["gcloud", "sql", "instances", "describe", s.sql_instance, *p],
        "gcloud", "sql", "instances", "create", s.sql_instance, "--database-version=POSTGRES_16",
        "--edition=enterprise", f"--tier={s.sql_tier}", f"--region={s.region}",
        "--storage-auto-increase", *p,
    )  # fmt: skip
    script.unless(
        ["gcloud", "sql", "databases", "describe", "nbenv", f"--instance={s.sql_instance}", *p],
        "gcloud", "sql", "databases", "create", "nbenv", f"--instance={s.sql_instance}", *p,
    )  # fmt: skip
    instance = f"--instance={s.sql_instance}"
    script.raw(
        shlex.join(["gcloud", "sql", "users", "create", "nbenv", instance, *p])
        + ' --password="$NBENV_DB_PASSWORD" >/dev/null 2>&1 || '
        + shlex.join(["gcloud", "sql", "users", "set-password", "nbenv", instance, *p])
        + ' --password="$NBENV_DB_PASSWORD"'
    )

    script.step("Least IAM roles of each service account")

    def project_role(member: str, role: str) -> None:
        script.run(
            "gcloud", "projects", "add-iam-policy-binding", s.project,
            f"--member=serviceAccount:{member}", f"--role={role}", "--condition=None", "--quiet",
        )  # fmt: skip

    # The bot: its database, running the image triggers, Workbench instances.
    project_role(bot, "roles/cloudsql.client")
    project_role(bot, "roles/cloudbuild.builds.editor")
    project_role(bot, "roles/notebooks.admin")
    # Read what Artifact Analysis found in each image (the plan's known vulnerabilities).
    project_role(bot, "roles/containeranalysis.occurrences.viewer")
    # The relay: its database and its Eventarc (Pub/Sub) triggers.
    project_role(relay, "roles/cloudsql.client")
    project_role(relay, "roles/eventarc.eventReceiver")
    if s.legacy_environments:
        project_role(relay, "roles/notebooks.admin")  # it publishes to staging: v1 mirror too
    # Builds: their logs (registry and report topic are granted on those resources).
    project_role(build, "roles/logging.logWriter")
    for member, role in [
        (bot, "roles/artifactregistry.writer"),  # environment tags
        (relay, "roles/artifactregistry.writer"),  # staging tag on a build's success
        (build, "roles/artifactregistry.writer"),  # push the built image
        (notebook, "roles/artifactregistry.reader"),  # instances pull their image
    ]:
        script.run(
            "gcloud", "artifacts", "repositories", "add-iam-policy-binding", repository,
            f"--location={registry_location}", f"--member=serviceAccount:{member}",
            f"--role={role}", *p,
        )  # fmt: skip
    for secret, members in [
        ("slack-bot-token", [bot, relay]),
        ("slack-signing-secret", [bot]),
        ("nbenv-db", [bot, relay]),
    ]:
        for member in members:
            script.run(
                "gcloud", "secrets", "add-iam-policy-binding", secret,
                f"--member=serviceAccount:{member}",
                "--role=roles/secretmanager.secretAccessor", *p,
            )  # fmt: skip
    for topic, member in [(s.topics["jobs"], bot), (s.topics["reports"], build)]:
        script.run(
            "gcloud", "pubsub", "topics", "add-iam-policy-binding", topic,
            f"--member=serviceAccount:{member}", "--role=roles/pubsub.publisher", *p,
        )  # fmt: skip
    for account in (build, notebook):  # the bot starts builds and instances that run as them
        script.run(
            "gcloud", "iam", "service-accounts", "add-iam-policy-binding", account,
            f"--member=serviceAccount:{bot}", "--role=roles/iam.serviceAccountUser", *p,
        )  # fmt: skip
    # The people nbenv creates instances for (gcp.google_accounts) open them in "single
    # user" mode, which needs roles/iam.serviceAccountUser on the instance's service account
    # when the owner did not create the instance (the bot did); notebooks.viewer shows it in
    # the console, the link nbenv gives while the instance starts.
    for person in s.instance_owners:
        script.run(
            "gcloud", "iam", "service-accounts", "add-iam-policy-binding", notebook,
            f"--member=user:{person}", "--role=roles/iam.serviceAccountUser", *p,
        )  # fmt: skip
        script.run(
            "gcloud", "projects", "add-iam-policy-binding", s.project,
            f"--member=user:{person}", "--role=roles/notebooks.viewer", "--condition=None",
            "--quiet",
        )  # fmt: skip
    # Pub/Sub signs the push's OIDC token as nbenv-push.
    number = f"$(gcloud projects describe {s.project} --format='value(projectNumber)')"
    script.raw(
        shlex.join([
            "gcloud", "iam", "service-accounts", "add-iam-policy-binding", push, *p,
            "--role=roles/iam.serviceAccountTokenCreator",
        ])
        + f' --member="serviceAccount:service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com"'
    )  # fmt: skip

    script.step("The bot on Cloud Run (root Dockerfile), its URL for Slack")
    script.run(
        "gcloud", "run", "deploy", s.service, "--source=.", f"--region={s.region}",
        f"--service-account={bot}", f"--add-cloudsql-instances={sql}",
        "--set-secrets=SLACK_BOT_TOKEN=slack-bot-token:latest,"
        "SLACK_SIGNING_SECRET=slack-signing-secret:latest,NBENV_DATABASE_URL=nbenv-db:latest",
        f"--set-env-vars=NBENV_CONFIG={s.config_file}",
        # Slack calls it (requests are verified with the signing secret); the outbox and
        # job dispatch threads need CPU between requests.
        "--allow-unauthenticated", "--no-cpu-throttling", "--min-instances=1",
        "--timeout=600", *p,
    )  # fmt: skip

    script.step("The build relay: Cloud Functions (2nd gen) on the build and report topics")
    for function, topic in [
        ("nbenv-relay", s.topics["builds"]),
        ("nbenv-report-relay", s.topics["reports"]),
    ]:
        script.run(
            "gcloud", "functions", "deploy", function, "--gen2", "--runtime=python311",
            f"--region={s.region}", "--source=.", "--entry-point=relay_build_status",
            "--set-build-env-vars=GOOGLE_FUNCTION_SOURCE=functions/main.py",
            f"--trigger-topic={topic}", "--retry", f"--service-account={relay}",
            f"--trigger-service-account={relay}", f"--set-env-vars=NBENV_CONFIG={s.config_file}",
            "--set-secrets=SLACK_BOT_TOKEN=slack-bot-token:latest,NBENV_DATABASE_URL=nbenv-db:latest",
            *p,
        )  # fmt: skip
        # A 2nd-gen function is a Cloud Run service: that is where Cloud SQL is attached.
        script.run(
            "gcloud", "run", "services", "update", function, f"--region={s.region}",
            f"--add-cloudsql-instances={sql}", *p,
        )  # fmt: skip
        script.run(
            "gcloud", "functions", "add-invoker-policy-binding", function, f"--region={s.region}",
            f"--member=serviceAccount:{relay}", *p,
        )  # fmt: skip

    script.step("Dead letters: the relay's trigger subscriptions retry a bounded number of times")
    # Eventarc creates each function's trigger subscription: find it, then give it the
    # dead-letter policy. Pub/Sub's service agent forwards the dead letters: it publishes
    # to the dead-letter topic and acknowledges on the source subscription.
    agent = f"service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    script.raw(
        shlex.join([
            "gcloud", "pubsub", "topics", "add-iam-policy-binding", DEAD_LETTERS,
            "--role=roles/pubsub.publisher", *p,
        ])
        + f' --member="serviceAccount:{agent}"'
    )  # fmt: skip
    for function in ("nbenv-relay", "nbenv-report-relay"):
        trigger = shlex.join([
            "gcloud", "functions", "describe", function, f"--region={s.region}", "--v2",
            "--format=value(eventTrigger.trigger)", *p,
        ])  # fmt: skip
        subscription = (
            f'"$(gcloud eventarc triggers describe "$({trigger})" '
            f"--format='value(transport.pubsub.subscription)' --project {s.project})\""
        )
        script.raw(
            shlex.join(["gcloud", "pubsub", "subscriptions", "update"])
            + f" {subscription} "
            + shlex.join([
                f"--dead-letter-topic={DEAD_LETTERS}",
                f"--max-delivery-attempts={MAX_DELIVERY_ATTEMPTS}",
                "--min-retry-delay=10s", "--max-retry-delay=600s", *p,
            ])
        )  # fmt: skip
        script.raw(
            shlex.join(["gcloud", "pubsub", "subscriptions", "add-iam-policy-binding"])
            + f" {subscription} "
            + shlex.join(["--role=roles/pubsub.subscriber", *p])
            + f' --member="serviceAccount:{agent}"'
        )  # fmt: skip

    script.step("The job queue's authenticated push subscription to /pubsub/jobs")
    service_url = (
        f"$(gcloud run services describe {s.service} --region={s.region} --project {s.project} "
        "--format='value(status.url)')"
    )
    subscription = f"{s.topics['jobs']}-push"
    script.raw(
        shlex.join(["gcloud", "pubsub", "subscriptions", "describe", subscription, *p])
        + " >/dev/null 2>&1 || "
        + shlex.join([
            "gcloud", "pubsub", "subscriptions", "create", subscription,
            f"--topic={s.topics['jobs']}", f"--push-auth-service-account={push}",
            f"--push-auth-token-audience={s.jobs_audience}", "--ack-deadline=600",
            "--min-retry-delay=10s", "--max-retry-delay=600s", *p,
        ])
        + f' --push-endpoint="{service_url}/pubsub/jobs"'
    )  # fmt: skip

    script.step("Cloud Build triggers: each image's staging and production branch")
    declared = {
        which: _declared_substitutions(ROOT / "config" / "cloudbuild" / f"{which}.yaml")
        for which in ("staging", "production")
    }
    for image, settings in sorted(s.images.items()):
        source = settings.get("source") or {}
        folder = source.get("path") or f"notebooks/{image}"
        for which, branch in [
            ("staging", source.get("staging_branch", "staging")),
            ("production", source.get("production_branch", "main")),
        ]:
            name = (s.triggers.get(image) or {}).get(which) or f"nbenv-{_slug(image)}-{which}"
            known = {
                "_IMAGE_NAME": image,
                "_REGISTRY": s.registry,
                "_IMAGE_FOLDER": folder,
                "_REPORTS_TOPIC": s.topics["reports"],
            }
            substitutions = ",".join(
                f"{key}={value}" for key, value in known.items() if key in declared[which]
            )
            script.unless(
                ["gcloud", "builds", "triggers", "describe", name, f"--region={s.region}", *p],
                "gcloud", "builds", "triggers", "create", "github", f"--name={name}",
                f"--region={s.region}", f"--repository={s.repository}",
                f"--branch-pattern=^{_regex_literal(branch)}$",
                f"--build-config=config/cloudbuild/{which}.yaml",
                f"--included-files={folder}/**", f"--substitutions={substitutions}",
                f"--service-account=projects/{s.project}/serviceAccounts/{build}", *p,
            )  # fmt: skip
    return script


def _regex_literal(text: str) -> str:
    """TEXT as an RE2 pattern matching exactly it (branch names are mostly plain)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text)


def _declared_substitutions(path: Path) -> set[str]:
    if not path.is_file():
        return {"_IMAGE_NAME"}
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return set(document.get("substitutions") or {}) | {"_IMAGE_NAME"}


def trigger_names(s: Settings) -> dict[str, dict[str, str]]:
    """The triggers block config/nbenv.yaml needs (names the script creates)."""
    return {
        image: {
            which: (s.triggers.get(image) or {}).get(which) or f"nbenv-{_slug(image)}-{which}"
            for which in ("staging", "production")
        }
        for image in sorted(s.images)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/setup.sh", description="Set up nbenv on Google Cloud (docs/deploy.md)."
    )
    parser.add_argument("--project", help="Google Cloud project ID (default: gcp.project)")
    parser.add_argument("--region", help="default: gcp.region of the config")
    parser.add_argument(
        "--repository",
        help="the connected GitHub repository: projects/P/locations/R/connections/C/"
        "repositories/NAME",
    )
    parser.add_argument("--config", default=str(ROOT / "config" / "nbenv.yaml"))
    parser.add_argument("--service", default="nbenv", help="Cloud Run service name")
    parser.add_argument("--sql-instance", default="nbenv")
    parser.add_argument("--sql-tier", default="db-g1-small")
    parser.add_argument("--dry-run", action="store_true", help="print every command, run none")
    options = parser.parse_args(argv)
    try:
        settings = load_settings(options)
    except SetupError as error:
        print(f"setup: {error}", file=sys.stderr)
        return 2
    script = plan(settings).text()
    triggers = trigger_names(settings)
    if options.dry_run:
        print(script, end="")
        note = yaml.safe_dump({"triggers": triggers}, sort_keys=True).strip()
        print("\n# gcp.triggers in the config, for the triggers above:")
        print("\n".join(f"#   {line}" for line in note.splitlines()))
        return 0
    environment = dict(os.environ)
    environment.setdefault("NBENV_DB_PASSWORD", secrets.token_urlsafe(24))
    result = subprocess.run(["bash", "-s"], input=script, text=True, cwd=ROOT, env=environment)
    if result.returncode != 0:
        print("setup: stopped at the first failure (above); fix it and run again", file=sys.stderr)
        return result.returncode
    note = yaml.safe_dump({"triggers": triggers}, sort_keys=True)
    print(f"setup: done. The config's gcp section needs:\n{note}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
