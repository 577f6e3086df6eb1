"""Who may ask nbenv anything, read from the config file without pydantic.

`nbenv serve` acks slash commands with this while its worker still loads the rest:
loading pydantic and building the config's models is a tenth of a second of cold start.
It reads a file that `bot.config.load_config` has already accepted (the server starts no
worker before), so it reads, and does not check, the two things the first check needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from bot.domain.policy import TeamRoles

DEFAULT_CONFIG_PATH = "config/nbenv.yaml"


def config_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file: PATH, or $NBENV_CONFIG, or the default."""
    return Path(path or os.environ.get("NBENV_CONFIG") or DEFAULT_CONFIG_PATH)


@dataclass(frozen=True)
class Access:
    teams: tuple[TeamRoles, ...]
    images: frozenset[str]

    def knows_user(self, user: str) -> bool:
        return any(team.role_of(user) is not None for team in self.teams)


def read_access(path: str | os.PathLike[str] | None = None) -> Access:
    """The teams and images of a config file that load_config has accepted."""
    raw = yaml.load(config_file(path).read_text(encoding="utf-8"), Loader=_Loader)
    teams = tuple(
        TeamRoles(
            owners=frozenset(team.get("owners") or ()),
            testers=frozenset(team.get("testers") or ()),
            users=frozenset(team.get("users") or ()),
        )
        for team in raw["teams"].values()
    )
    return Access(teams=teams, images=frozenset(raw["images"]))


# The C loader when PyYAML has it (what yaml.safe_load would use is the pure-Python one).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
