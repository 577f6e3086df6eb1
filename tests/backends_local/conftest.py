"""Fixtures for the local backend: a real git repository and a config that points at it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bot.config import Config, load_config
from tests.conftest import IMAGE, OWNER, TESTER, USER
from tests.support.gitrepo import ImageRepo, image_repo

CHANNEL = "C01NLP"


def local_config_text(repo: Path, ports: tuple[int, int] = (18890, 18990)) -> str:
    return textwrap.dedent(
        f"""
        backend: local
        local:
          instances_port_range: [{ports[0]}, {ports[1]}]
        teams:
          nlp:
            owners: [{OWNER}]
            testers: [{TESTER}]
            users: [{USER}]
        images:
          {IMAGE}:
            team: nlp
            channel: {CHANNEL}
            source:
              repo: {repo}
              staging_branch: staging
              production_branch: main
        """
    )


@pytest.fixture
def repo(tmp_path: Path) -> ImageRepo:
    return image_repo(tmp_path / "repo")


@pytest.fixture
def local_config_file(tmp_path: Path, repo: ImageRepo) -> Path:
    path = tmp_path / "nbenv-local.yaml"
    path.write_text(local_config_text(repo.path), encoding="utf-8")
    return path


@pytest.fixture
def local_config(local_config_file: Path) -> Config:
    return load_config(local_config_file)
