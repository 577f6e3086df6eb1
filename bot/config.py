"""The configuration file (config/nbenv.yaml) as pydantic models.

Invalid config stops the program with the file, the key and what is wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.config_access import config_file
from bot.domain.errors import ConfigError, NbenvError
from bot.domain.names import check_user_id, image_name_problem
from bot.domain.policy import Role, TeamRoles

EVERYONE = "*"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_members(members: list[str]) -> list[str]:
    for member in members:
        if member != EVERYONE:
            try:
                check_user_id(member)
            except NbenvError as error:
                raise ValueError(error.message) from None
    return members


class Team(_Strict):
    owners: list[str] = Field(min_length=1)
    testers: list[str] = []
    users: list[str] = []

    _members = field_validator("owners", "testers", "users")(_check_members)

    def roles(self) -> TeamRoles:
        return TeamRoles(
            owners=frozenset(self.owners),
            testers=frozenset(self.testers),
            users=frozenset(self.users),
        )


class Source(_Strict):
    repo: str = "."
    staging_branch: str = "staging"
    production_branch: str = "main"
    path: str | None = None  # default: notebooks/IMAGE


class InstanceDefaults(_Strict):
    machine_type: str = "e2-standard-4"
    location: str | None = None  # gcp zone; default: the gcp region's "-a" zone
    accelerator_type: str | None = None
    accelerator_count: int = 0
    boot_disk_gb: int = 150


class Image(_Strict):
    team: str
    channel: str
    source: Source = Source()
    approvals: Annotated[int, Field(ge=1, le=20)] = 1
    owner_approval_counts: bool = False
    instance: InstanceDefaults = InstanceDefaults()

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not value.startswith(("C", "G", "#")):
            raise ValueError("expected a Slack channel ID like C0123ABCD (or #name)")
        return value


class GcpTopics(_Strict):
    builds: str = "cloud-builds"
    jobs: str = "nbenv-jobs"
    reports: str = "nbenv-reports"


class GcpTriggers(_Strict):
    staging: str
    production: str | None = None


class Gcp(_Strict):
    project: str
    region: str = "us-central1"
    registry: str  # e.g. us-central1-docker.pkg.dev/PROJECT/notebooks
    triggers: dict[str, GcpTriggers] = {}
    topics: GcpTopics = GcpTopics()
    mirror_legacy_environments: bool = False
    jobs_audience: str | None = None  # expected OIDC audience of the job push subscription
    jobs_service_account: str | None = None  # expected OIDC email of that subscription
    instance_service_account: str | None = None  # what Workbench instances run as

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        # Environment tags are Artifact Registry tags: Container Registry paths won't do.
        if not re.fullmatch(r"[a-z0-9-]+-docker\.pkg\.dev(/[^/\s]+){2,}", value.strip()):
            raise ValueError(
                "expected LOCATION-docker.pkg.dev/PROJECT/REPOSITORY[/PATH] (Artifact Registry)"
            )
        return value.strip()


class Local(_Strict):
    instances_port_range: tuple[int, int] = (8890, 8990)
    # Without a container, an instance runs as nbenv's OS user and can reach its store and
    # files: people asking through Slack get one only when the operator says so here.
    shared_instances: bool = False


class Config(_Strict):
    backend: Literal["local", "gcp"] = "local"
    teams: dict[str, Team] = Field(min_length=1)
    images: dict[str, Image] = Field(min_length=1)
    gcp: Gcp | None = None
    local: Local = Local()
    base_dir: Path = Path(".")  # the config file's folder: relative repo paths start here

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        for name, image in self.images.items():
            problem = image_name_problem(name)
            if problem:
                raise ValueError(f"images.{name}: {problem}")
            if image.team not in self.teams:
                known = ", ".join(sorted(self.teams))
                raise ValueError(f"images.{name}.team: no team {image.team!r} (teams: {known})")
        if self.backend == "gcp":
            if self.gcp is None:
                raise ValueError("gcp: required when backend is gcp")
            for name in self.gcp.triggers:
                if name not in self.images:
                    raise ValueError(f"gcp.triggers.{name}: no such image")
        return self

    def image(self, name: str) -> Image:
        return self.images[name]

    def team_roles(self, image: str) -> TeamRoles:
        return self.teams[self.images[image].team].roles()

    def role_of(self, image: str, user: str) -> Role | None:
        return self.team_roles(image).role_of(user)

    def repo_path(self, image: str) -> Path:
        repo = Path(self.images[image].source.repo).expanduser()
        return repo if repo.is_absolute() else (self.base_dir / repo).resolve()

    def image_folder(self, image: str) -> str:
        return self.images[image].source.path or f"notebooks/{image}"

    def knows_user(self, user: str) -> bool:
        return any(team.roles().role_of(user) is not None for team in self.teams.values())


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config; ConfigError names the file, the key and the problem."""
    file = config_file(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found (set NBENV_CONFIG)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    raw.setdefault("base_dir", str(file.resolve().parent))
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{file}: {_describe(error)}") from None
