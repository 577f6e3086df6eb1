"""What a person can ask nbenv to do: one typed object per command, checked when made.

How each is written and parsed, who may ask it and how it is answered is in one table,
`bot.domain.command_table`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bot.domain.errors import BadInput
from bot.domain.names import INSTANCE_NAME, Env, check_image_name, check_sha_ref
from bot.domain.paging import DEFAULT_PAGE, check_limit, parse_audit_cursor, parse_version_cursor

MAX_REASON = 1000  # characters of a reason, as many as the reject dialog lets a tester type

# Each command is checked when it is made, however it is made (typed, a button, the reject
# dialog, a queued job): a malformed one cannot exist.


@dataclass(frozen=True, kw_only=True)
class Command:
    name: ClassVar[str]
    image: str | None = None
    json: bool = False  # the answer as JSON (where the usage offers --json)

    def __post_init__(self) -> None:
        if self.image is not None:
            check_image_name(self.image)
        reason = getattr(self, "reason", None)
        if reason is not None and len(reason) > MAX_REASON:
            raise BadInput(
                f"the reason is {len(reason):,} characters long: at most {MAX_REASON:,}, "
                "please shorten it"
            )
        for name in ("sha", "to"):  # SHA references, kept lowercased
            ref = getattr(self, name, None)
            if ref is not None:
                object.__setattr__(self, name, check_sha_ref(ref))


@dataclass(frozen=True, kw_only=True)
class Help(Command):
    name: ClassVar[str] = "help"


@dataclass(frozen=True, kw_only=True)
class Status(Command):
    name: ClassVar[str] = "status"


@dataclass(frozen=True, kw_only=True)
class _Paged(Command):
    """A listing shown newest first, a page at a time."""

    image: str = field()  # required: a bare `image: str` would inherit the default None
    limit: int = DEFAULT_PAGE
    before: str | None = None  # the cursor of the page to show (from the one before)
    read_cursor: ClassVar[Callable[[str], object]]  # refuses a cursor of another listing

    def __post_init__(self) -> None:
        super().__post_init__()
        check_limit(self.limit)
        if self.before is not None:
            type(self).read_cursor(self.before)


@dataclass(frozen=True, kw_only=True)
class Versions(_Paged):
    name: ClassVar[str] = "versions"
    read_cursor = staticmethod(parse_version_cursor)


@dataclass(frozen=True, kw_only=True)
class History(_Paged):
    name: ClassVar[str] = "history"
    sha: str | None = None  # a full SHA or a 7+ digit prefix, lowercased
    read_cursor = staticmethod(parse_audit_cursor)


@dataclass(frozen=True, kw_only=True)
class Diff(Command):
    name: ClassVar[str] = "diff"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    diff_from: str | None = None  # an environment or a SHA; production when unset
    diff_to: str | None = None  # staging when unset


@dataclass(frozen=True, kw_only=True)
class Build(Command):
    name: ClassVar[str] = "build"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    ref: str | None = None  # a branch, tag or SHA; the staging branch when unset


@dataclass(frozen=True, kw_only=True)
class Approve(Command):
    name: ClassVar[str] = "approve"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    sha: str | None = None  # staging's when unset


@dataclass(frozen=True, kw_only=True)
class Reject(Command):
    name: ClassVar[str] = "reject"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    reason: str
    sha: str | None = None  # staging's when unset


@dataclass(frozen=True, kw_only=True)
class Promote(Command):
    name: ClassVar[str] = "promote"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    dry_run: bool = False
    force: bool = False  # overrides a rejection; needs a reason
    reason: str | None = None
    confirmed: bool = False  # --yes: no interactive confirmation


@dataclass(frozen=True, kw_only=True)
class Rollback(Command):
    name: ClassVar[str] = "rollback"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    to: str | None = None  # a SHA instead of fallback
    force: bool = False  # allows a revoked SHA; needs a reason
    reason: str | None = None
    confirmed: bool = False  # --yes: no interactive confirmation


@dataclass(frozen=True, kw_only=True)
class Instance(Command):
    name: ClassVar[str] = "instance"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    env: Env = Env.PRODUCTION
    instance_name: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.instance_name is not None:
            check_instance_name(self.instance_name)


@dataclass(frozen=True, kw_only=True)
class Instances(Command):
    name: ClassVar[str] = "instances"
    stop: str | None = None  # the name of an instance to stop


@dataclass(frozen=True, kw_only=True)
class Freeze(Command):
    name: ClassVar[str] = "freeze"
    image: str = field()  # required: a bare `image: str` would inherit the default None
    reason: str


@dataclass(frozen=True, kw_only=True)
class Unfreeze(Command):
    name: ClassVar[str] = "unfreeze"
    image: str = field()  # required: a bare `image: str` would inherit the default None


def is_dry_run(command: Command) -> bool:
    return isinstance(command, Promote) and command.dry_run


def check_instance_name(name: str) -> str:
    if not INSTANCE_NAME.fullmatch(name):
        raise BadInput(
            f"{name!r} is not a valid instance name: lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    return name


def to_fields(command: Command) -> dict[str, Any]:
    """COMMAND as JSON: its name and what differs from the defaults."""
    data: dict[str, Any] = {"name": command.name}
    for known in dataclasses.fields(command):
        value = getattr(command, known.name)
        if value != known.default:
            data[known.name] = value.value if isinstance(value, Env) else value
    return data
