"""The configuration file (config/nbenv.yaml) as pydantic models.

Invalid config stops the program with one line: the file, the line, the key and what is
wrong (`config/nbenv.yaml:12: teams.nlp.testers[0]: …`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.config_file import KeyPath, config_file, key_path, read_config_file, team_roles
from bot.domain.errors import ConfigError
from bot.domain.freeze_windows import FreezeWindow, week_second, zone
from bot.domain.idle import DEFAULT_IDLE_TIMEOUT_S, parse_idle_timeout
from bot.domain.names import image_name_problem, user_id_problem
from bot.domain.policy import EVERYONE, Role, TeamRoles
from bot.domain.vulnerabilities import Severity


class Problem(ValueError):
    """A validation problem AT a place below the value being validated (a list item,
    a key of the model), so that the error names that key and its line."""

    def __init__(self, at: KeyPath, message: str) -> None:
        super().__init__(message)
        self.at = at


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Team(_Strict):
    owners: list[str] = Field(min_length=1)
    testers: list[str] = []
    users: list[str] = []
    freeze_windows: list[FreezeWindowSpec] = []  # for every image of the team

    @field_validator("owners", "testers", "users")
    @classmethod
    def _members(cls, members: list[str], info: ValidationInfo) -> list[str]:
        for index, member in enumerate(members):
            if member == EVERYONE:
                if info.field_name != "users":
                    raise Problem(
                        (index,),
                        f'"{EVERYONE}" (everyone) may only be listed in users: {info.field_name} '
                        "are named people",
                    )
                continue
            problem = user_id_problem(member)
            if problem:
                raise Problem((index,), problem)
        return members

    @model_validator(mode="after")
    def _one_role_each(self) -> Team:
        seen: dict[str, str] = {}
        for role in ("owners", "testers", "users"):
            for index, member in enumerate(getattr(self, role)):
                if member in seen and seen[member] != role:
                    raise Problem(
                        (role, index),
                        f"{member} is also listed in {seen[member]}: give each person one "
                        "role per team (each role may do all that the roles below it may)",
                    )
                seen.setdefault(member, role)
        return self

    def roles(self) -> TeamRoles:
        return team_roles(self.model_dump(include={"owners", "testers", "users"}))


class Source(_Strict):
    repo: str = "."
    staging_branch: str = "staging"
    production_branch: str = "main"
    path: str | None = None  # default: notebooks/IMAGE


# A Compute Engine zone: REGION-LETTER, e.g. us-central1-b (regions are AREA-PLACE+DIGITS).
_ZONE = re.compile(r"[a-z]+(?:-[a-z]+)+[0-9]+-[a-z]")
# What Workbench takes as an instance owner: one person's Google account (an email).
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_MAX_EMAIL = 254
# A public (C…) or private (G…, or C… since 2021) channel's ID: Slack's conversations.*
# methods need the ID, a #name does not do.
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{2,20}")


def _check_zone(value: str | None) -> str | None:
    if value is not None and not _ZONE.fullmatch(value):
        raise ValueError(
            f"{value[:40]!r} is not a Compute Engine zone (like us-central1-b): Workbench "
            "instances live in a zone, not a region"
        )
    return value


class FreezeWindowSpec(_Strict):
    """`{from: "fri 16:00", to: "mon 09:00", timezone: Europe/Berlin, reason: weekend}`"""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    starts: str = Field(alias="from")
    ends: str = Field(alias="to")
    timezone: str
    reason: str

    @model_validator(mode="after")
    def _window(self) -> FreezeWindowSpec:
        for key, text in (("from", self.starts), ("to", self.ends)):
            try:
                week_second(text)
            except ValueError as error:
                raise Problem((key,), str(error)) from None
        try:
            zone(self.timezone)
        except ValueError as error:
            raise Problem(("timezone",), str(error)) from None
        try:
            self.window()
        except ValueError as error:
            raise Problem((), str(error)) from None
        return self

    def window(self) -> FreezeWindow:
        return FreezeWindow.of(self.starts, self.ends, self.timezone, self.reason)


class InstanceDefaults(_Strict):
    machine_type: str = "e2-standard-4"
    # The Workbench zone (gcp backend); default gcp.zone. Never guessed from the region:
    # zones differ in the machine types and GPUs they offer, and some (us-east1-a) do not exist.
    location: str | None = None
    accelerator_type: str | None = None
    accelerator_count: int = 0
    boot_disk_gb: int = 150
    # Seconds an instance may sit idle before it stops itself (None: never). Written as
    # `3h`, `90m`, `1h30m`, or 0 / null; forgotten GPU instances are what cost money.
    idle_timeout: int | None = DEFAULT_IDLE_TIMEOUT_S

    @field_validator("location")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        return _check_zone(value)

    @field_validator("idle_timeout", mode="before")
    @classmethod
    def _idle_timeout(cls, value: object) -> int | None:
        return parse_idle_timeout(value)

    @model_validator(mode="after")
    def _accelerator(self) -> InstanceDefaults:
        # Compute Engine attaches 1, 2, 4 or 8 GPUs; a type without a count used to give
        # an instance with no GPU at all, silently.
        if self.accelerator_type and self.accelerator_count not in (1, 2, 4, 8):
            raise Problem(
                ("accelerator_count",),
                f"{self.accelerator_count} with accelerator_type {self.accelerator_type}: "
                "give 1, 2, 4 or 8",
            )
        if self.accelerator_count and not self.accelerator_type:
            raise Problem(("accelerator_type",), "required with an accelerator_count")
        return self


class Image(_Strict):
    team: str
    channel: str
    source: Source = Source()
    approvals: Annotated[int, Field(ge=1, le=20)] = 1
    owner_approval_counts: bool = False
    instance: InstanceDefaults = InstanceDefaults()
    freeze_windows: list[FreezeWindowSpec] = []  # beside the team's
    # A promotion that introduces a known vulnerability this bad or worse is refused
    # unless an owner forces it with a reason (gcp: Artifact Analysis). None: never.
    block_on_severity: str | None = None

    @field_validator("block_on_severity")
    @classmethod
    def _severity(cls, value: str | None) -> str | None:
        if value is None:
            return None
        severity = Severity.parse(value)  # ValueError names the choices
        if severity is Severity.UNSPECIFIED:
            raise ValueError(f"expected a severity such as CRITICAL or HIGH, not {value!r}")
        return severity.name

    @property
    def blocking_severity(self) -> Severity | None:
        return Severity[self.block_on_severity] if self.block_on_severity else None

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not _CHANNEL_ID.fullmatch(value):
            raise ValueError(
                f"expected a Slack channel ID like C0123ABCD, not {value[:40]!r}: in Slack, "
                "open the channel's details (click its name); the ID is at the bottom"
            )
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
    zone: str | None = None  # Workbench zone of images without instance.location
    # Slack user ID -> the person's Google account: the owner of the instances they ask
    # for (Workbench `instanceOwners`), the only account that can open them.
    google_accounts: dict[str, str] = {}

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _check_zone(value)

    @field_validator("google_accounts")
    @classmethod
    def _google_accounts(cls, accounts: dict[str, str]) -> dict[str, str]:
        for user, account in accounts.items():
            problem = user_id_problem(user)
            if problem:
                raise Problem((user,), problem)
            if len(account) > _MAX_EMAIL or not _EMAIL.fullmatch(account):
                raise Problem(
                    (user,),
                    f"{account[:60]!r} is not a Google account: expected one person's "
                    "email address, like alice@example.com",
                )
        return accounts

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
                raise Problem(("images", name), problem)
            if image.team not in self.teams:
                known = ", ".join(sorted(self.teams))
                raise Problem(("images", name, "team"), f"no team {image.team!r} (teams: {known})")
        if self.backend == "gcp":
            if self.gcp is None:
                raise Problem(("gcp",), "required when backend is gcp")
            for name in self.gcp.triggers:
                if name not in self.images:
                    raise Problem(("gcp", "triggers", name), "no such image")
            for name, image in self.images.items():
                if image.instance.location is None and self.gcp.zone is None:
                    raise Problem(
                        ("images", name, "instance", "location"),
                        "required on the gcp backend (or gcp.zone for every image): the "
                        "Workbench zone of its instances, e.g. us-central1-b; nbenv does not "
                        "guess one, zones differ in the machines and GPUs they offer",
                    )
        return self

    def image(self, name: str) -> Image:
        return self.images[name]

    def freeze_windows(self, image: str) -> tuple[FreezeWindow, ...]:
        """The recurring windows in which IMAGE is not promoted: its team's and its own."""
        settings = self.images[image]
        specs = [*self.teams[settings.team].freeze_windows, *settings.freeze_windows]
        return tuple(spec.window() for spec in specs)

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


def _line_of(root: yaml.Node | None, at: KeyPath) -> int:
    """The line of the key (or list item) at AT, or of the nearest one above it that the
    file has (a missing key: its parent's)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else 1)
    for part in at:
        if isinstance(node, yaml.MappingNode):
            keys = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
            if str(part) not in keys:
                break
            key, node = keys[str(part)]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe(file: Path, error: ValidationError, root: yaml.Node | None) -> str:
    """FILE:LINE: KEY: PROBLEM, on one line; further problems follow with their lines."""
    described = []
    for item in error.errors():
        cause = (item.get("ctx") or {}).get("error")
        at = tuple(item["loc"]) + (cause.at if isinstance(cause, Problem) else ())
        message = item["msg"].removeprefix("Value error, ")
        described.append((_line_of(root, at), key_path(at) or "(the top level)", message))
    (line, key, message), *more = described
    return f"{file}:{line}: {key}: {message}" + "".join(
        f"; line {line}: {key}: {message}" for line, key, message in more
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config; ConfigError names the file, the line, the key and the
    problem, on one line."""
    file = config_file(path)
    raw, root = read_config_file(file)
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    raw.setdefault("base_dir", str(file.resolve().parent))
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(file, error, root)) from None
