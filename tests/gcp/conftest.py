"""The gcp backend against fake Google APIs at the wire (tests/support/fake_google.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.domain.names import Pipeline
from tests.conftest import IMAGE, OWNER, TESTER, TESTER2, USER, VISION_OWNER, sha_of
from tests.support.fake_google import FakeGoogleApis

REGISTRY = "us-central1-docker.pkg.dev/nbenv-test/notebooks"
GPU_IMAGE = "vision.pytorch-gpu"
PASSED = {
    "python": "3.11.7",
    "packages": [{"name": "keras", "version": "3.4.1"}],
    "notebooks": [
        {"path": "tests/smoke.ipynb", "status": "passed", "duration_s": 1.0, "failure": None}
    ],
}

GCP_CONFIG = f"""
backend: gcp
teams:
  nlp:
    owners: [{OWNER}]
    testers: [{TESTER}, {TESTER2}]
    users: [{USER}]
  vision:
    owners: [{VISION_OWNER}]
    testers: [U05VTESTER]
    users: ["*"]
images:
  {IMAGE}:
    team: nlp
    channel: C01NLP
    instance:
      machine_type: n1-standard-4
  {GPU_IMAGE}:
    team: vision
    channel: C02VISION
    instance:
      machine_type: n1-standard-8
      location: europe-west4-b
      accelerator_type: NVIDIA_TESLA_T4
      accelerator_count: 1
      boot_disk_gb: 200
gcp:
  project: nbenv-test
  region: us-central1
  zone: us-central1-a
  registry: {REGISTRY}
  triggers:
    {IMAGE}: {{staging: nlp-staging, production: nlp-production}}
  google_accounts:
    {OWNER}: owner@example.com
    {TESTER}: tester@example.com
    {TESTER2}: tester2@example.com
    {USER}: user@example.com
    {VISION_OWNER}: vision-owner@example.com
"""

# The Google account each person above opens their instances with (gcp.google_accounts).
GOOGLE_ACCOUNTS = {
    OWNER: "owner@example.com",
    TESTER: "tester@example.com",
    TESTER2: "tester2@example.com",
    USER: "user@example.com",
    VISION_OWNER: "vision-owner@example.com",
}

__all__ = ["GOOGLE_ACCOUNTS", "GPU_IMAGE", "PASSED", "REGISTRY", "release", "sha_of"]


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Short timeouts so that "retried, then a clear error" takes a second, not minutes.
    monkeypatch.setenv("NBENV_GCP_TIMEOUT", "0.5")
    monkeypatch.setenv("NBENV_GCP_DEADLINE", "1.5")
    monkeypatch.setenv("NBENV_GCP_RETRY_DELAY", "0.01")


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGoogleApis]:
    with FakeGoogleApis(registry=REGISTRY) as fake:
        fake.add_trigger("nlp-staging", image=IMAGE)
        fake.add_trigger("nlp-production", image=IMAGE)
        fake.heads.update(staging=sha_of("staging head"), **{"release-7": sha_of("release 7")})
        monkeypatch.setenv("NBENV_GCP_ENDPOINT", fake.url)
        yield fake


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "nbenv-gcp.yaml"
    path.write_text(textwrap.dedent(GCP_CONFIG) + extra, encoding="utf-8")
    return path


@pytest.fixture
def gcp_config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def backend(google: FakeGoogleApis, gcp_config_file: Path):  # type: ignore[no-untyped-def]
    from bot.backends.gcp import GcpBackend
    from bot.config import load_config

    return GcpBackend(load_config(gcp_config_file))


@pytest.fixture
def gcp_runtime(db_url: str, gcp_config_file: Path, google: FakeGoogleApis):  # type: ignore[no-untyped-def]
    from bot.bootstrap import build_runtime

    return build_runtime(str(gcp_config_file), db_url)


def release(runtime: Any, google: FakeGoogleApis, label: str, *, approve: bool = True) -> str:
    """A version through the staging pipeline: pushed, published to staging, approved."""
    sha = sha_of(label)
    google.push(IMAGE, sha)
    runtime.nbenv.publish(Pipeline(label), IMAGE, sha, report=PASSED, branch="staging")
    if approve:
        runtime.nbenv.handle(TESTER, f"approve {IMAGE} {sha}")
    return sha
