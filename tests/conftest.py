"""Shared fixtures: a store on SQLite and on PostgreSQL, a test organisation, a runtime."""

from __future__ import annotations

import hashlib
import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Nothing in the tests may reach Google or probe for a metadata server.
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
os.environ["NO_GCE_CHECK"] = "True"
for _name in (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "NBENV_DATABASE_URL",
    "NBENV_AUDIT_KEY",
):
    os.environ.pop(_name, None)

OWNER = "U01OWNER"
TESTER = "U02TESTER"
TESTER2 = "U03TESTER"
USER = "U06USER"
VISION_OWNER = "U04VOWNER"
STRANGER = "U09STRANGER"
IMAGE = "nlp.keras-batch"

TEST_CONFIG = f"""
backend: local
teams:
  nlp:
    owners: [{OWNER}]
    testers: [{TESTER}, {TESTER2}]
    users: [{USER}]
  vision:
    owners: [{VISION_OWNER}]
    testers: [U05VTESTER]
    users: [U07ANALYST]
images:
  {IMAGE}:
    team: nlp
    channel: C01NLP
    approvals: 1
  nlp.two-approvals:
    team: nlp
    channel: C01NLP
    approvals: 2
  nlp.self-approve:
    team: nlp
    channel: C01NLP
    owner_approval_counts: true
  vision.pytorch-gpu:
    team: vision
    channel: C02VISION
"""


def sha_of(label: str) -> str:
    """A deterministic 40-hex commit SHA for a test label."""
    return hashlib.sha1(label.encode()).hexdigest()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    from tests.support.postgres import PostgresCluster, require_postgres_bin

    require_postgres_bin()
    with PostgresCluster() as cluster:
        yield cluster


def database_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database of KIND (sqlite: a file in TMP_PATH; postgres: on the
    session's throwaway cluster)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'nbenv.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on PostgreSQL."""
    return database_url(request.param, request, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nbenv.db'}"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "nbenv.yaml"
    path.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBENV_HOME", str(tmp_path / "home"))


@pytest.fixture
def runtime(db_url: str, config_file: Path):  # type: ignore[no-untyped-def]
    from bot.bootstrap import build_runtime

    return build_runtime(str(config_file), db_url)


def history_of(app: Any, actor: str, text: str) -> list[dict[str, Any]]:
    """Every entry `history …` shows, following its pages, oldest first (as recorded):
    the command itself shows the newest page first."""
    entries: list[dict[str, Any]] = []
    before = None
    while True:
        page = app.handle(actor, f"{text} --limit 100" + (f" --before {before}" if before else ""))
        entries += page.data["items"]
        before = page.data["next"]
        if not before:
            return entries[::-1]
