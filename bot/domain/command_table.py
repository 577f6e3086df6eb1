"""The commands that follow `/nbenv`, described once.

`COMMANDS` is the only place a command is described: its usage and summary, the options
it takes, how its words become a command object, the role it needs, whether it changes
anything, how Slack answers it and which SHA a refusal of it is filed under. The parser,
`/nbenv help`, the CLI's help, the Slack routing, the role checks and the audit all read
it. Its handlers live in the service (`bot.service.handlers.HANDLERS`), which this pure
module cannot import; a test checks that every command has one.

The same grammar serves Slack, the CLI and the console shell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from bot.domain.commands import (
    MAX_REASON,
    Approve,
    Build,
    Command,
    Diff,
    Freeze,
    Help,
    History,
    Instance,
    Instances,
    Promote,
    Reject,
    Rollback,
    Status,
    Unfreeze,
    Versions,
    is_dry_run,
)
from bot.domain.errors import BadInput
from bot.domain.names import Env, check_sha_ref, looks_like_sha, parse_env
from bot.domain.paging import DEFAULT_PAGE
from bot.domain.policy import Role
from bot.domain.words import split_words

MAX_COMMAND = 4000  # characters of the text after /nbenv: room for any command and its reason

_FLAGS_WITH_VALUE = {"--to", "--reason", "--env", "--name", "--stop", "--limit", "--before"}
_BOOL_FLAGS = {"--dry-run", "--force", "--json", "--yes"}
_FLAGS_TAKING_THE_REST = {"--reason"}  # a reason runs on to the next option, quoted or not


class Answered(StrEnum):
    """How Slack answers a command, chosen so that its ack waits for as little as possible."""

    AT_ONCE = "inline"  # in the ack: help and the small writes, recorded before Slack hears back
    LATER = "later"  # right after the ack, to the response_url; changes nothing
    QUEUED = "job"  # a durable job: changes that may be slow, answered through the outbox


C = TypeVar("C", bound=Command)


@dataclass(frozen=True)
class Spec(Generic[C]):
    type: type[C]
    usage: str
    summary: str
    make: Callable[[Words], C]  # the command from the words after its name
    options: frozenset[str] = frozenset()
    role: Role | Callable[[C], Role] | None = Role.USER  # needed on the image; None: anyone
    changes: bool | Callable[[C], bool] = False  # writes (so a retried request is not redone)
    answered: Answered | Callable[[C], Answered] = Answered.LATER
    confirm: bool = False  # Slack shows the plan and asks before it changes anything
    slow: bool = False  # may take seconds (git, a plan): Slack says the answer is coming
    # The SHA a refusal is filed under (so `history IMAGE SHA` shows it): a SHA reference,
    # or an environment whose SHA it is at the time.
    concerns: Callable[[C], str | Env | None] = lambda command: None
    action: Callable[[C], str] | None = None  # named in a role refusal; the name otherwise

    @property
    def name(self) -> str:
        return self.type.name

    def role_for(self, command: C) -> Role | None:
        return _decide(self.role, command)

    def answered_for(self, command: C) -> Answered:
        return _decide(self.answered, command)

    def action_for(self, command: C) -> str:
        return self.action(command) if self.action else self.name


def _decide(value: Any, command: Command) -> Any:
    return value(command) if callable(value) else value


@dataclass
class Words:
    """The words after a command's name: positional ones and options."""

    name: str
    positional: list[str]
    flags: dict[str, str | bool]

    def usage(self) -> str:
        return f"Usage: /nbenv {COMMANDS[self.name].usage}"

    def image(self) -> str:
        if not self.positional:
            raise BadInput(f"missing IMAGE. {self.usage()}")
        return self.positional[0]

    def at_most(self, count: int) -> list[str]:
        """The positional words, refused when there are more than COUNT."""
        extra = self.positional[count:]
        if extra:
            raise BadInput(f"unexpected {' '.join(extra)!r}. {self.usage()}")
        return self.positional

    def text(self, flag: str) -> str | None:
        value = self.flags.get(flag)
        return value if isinstance(value, str) else None

    def has(self, flag: str) -> bool:
        return self.flags.get(flag) is True

    def number(self, flag: str, default: int) -> int:
        text = self.text(flag)
        if text is None:
            return default
        if not (text.isascii() and text.isdigit() and len(text) <= 6):
            raise BadInput(f"{flag} takes a whole number, not {text[:20]!r}. {self.usage()}")
        return int(text)


def _status(words: Words) -> Status:
    given = words.at_most(1)
    return Status(image=given[0] if given else None, json=words.has("--json"))


def _versions(words: Words) -> Versions:
    words.at_most(1)
    return Versions(
        image=words.image(),
        json=words.has("--json"),
        limit=words.number("--limit", DEFAULT_PAGE),
        before=words.text("--before"),
    )


def _history(words: Words) -> History:
    given = words.at_most(2)
    sha = check_sha_ref(given[1]) if len(given) > 1 else None
    return History(
        image=words.image(),
        sha=sha,
        json=words.has("--json"),
        limit=words.number("--limit", DEFAULT_PAGE),
        before=words.text("--before"),
    )


def _diff(words: Words) -> Diff:
    refs = [_env_or_sha(word) for word in words.at_most(3)[1:]]
    return Diff(
        image=words.image(),
        diff_from=refs[0] if refs else None,
        diff_to=refs[1] if len(refs) > 1 else None,
        json=words.has("--json"),
    )


def _build(words: Words) -> Build:
    given = words.at_most(2)
    return Build(image=words.image(), ref=given[1] if len(given) > 1 else None)


def _approve(words: Words) -> Approve:
    given = words.at_most(2)
    return Approve(image=words.image(), sha=check_sha_ref(given[1]) if len(given) > 1 else None)


def _reject(words: Words) -> Reject:
    image, rest = words.image(), words.positional[1:]
    sha = None
    if rest and looks_like_sha(rest[0]) and (len(rest) > 1 or words.text("--reason")):
        sha, rest = check_sha_ref(rest[0]), rest[1:]
    reason = words.text("--reason") or " ".join(rest).strip()
    if not reason:
        raise BadInput(f"reject needs a REASON. {words.usage()}")
    return Reject(image=image, sha=sha, reason=reason)


def _promote(words: Words) -> Promote:
    words.at_most(1)
    reason = words.text("--reason")
    force = words.has("--force")
    if force and not (reason and reason.strip()):
        raise BadInput("--force needs --reason R: say why the rejection is overridden")
    return Promote(
        image=words.image(),
        dry_run=words.has("--dry-run"),
        force=force,
        reason=reason,
        confirmed=words.has("--yes"),
    )


def _rollback(words: Words) -> Rollback:
    words.at_most(1)
    to = words.text("--to")
    force = words.has("--force")
    if force and to is None:
        raise BadInput(
            "--force applies to `rollback IMAGE --to SHA`: it allows a revoked SHA. "
            + words.usage()
        )
    if force and not (words.text("--reason") or "").strip():
        raise BadInput("--force needs --reason R: say why the revoked SHA is used again")
    return Rollback(
        image=words.image(),
        to=check_sha_ref(to) if to is not None else None,
        reason=words.text("--reason"),
        force=force,
        confirmed=words.has("--yes"),
    )


def _instance(words: Words) -> Instance:
    words.at_most(1)
    env = words.text("--env")
    return Instance(
        image=words.image(),
        env=parse_env(env) if env is not None else Env.PRODUCTION,
        instance_name=words.text("--name"),
    )


def _instances(words: Words) -> Instances:
    given = words.at_most(1)
    return Instances(
        image=given[0] if given else None, stop=words.text("--stop"), json=words.has("--json")
    )


def _freeze(words: Words) -> Freeze:
    reason = words.text("--reason") or " ".join(words.positional[1:]).strip()
    image = words.image()
    if not reason:
        raise BadInput(f"freeze needs a REASON. {words.usage()}")
    return Freeze(image=image, reason=reason)


def _unfreeze(words: Words) -> Unfreeze:
    words.at_most(1)
    return Unfreeze(image=words.image())


def _change_answered(command: Promote | Rollback) -> Answered:
    """A plan to confirm comes right after the ack; a confirmed change is a durable job."""
    return Answered.LATER if is_dry_run(command) or not command.confirmed else Answered.QUEUED


def _table(*specs: Spec[Any]) -> dict[str, Spec[Any]]:
    return {spec.name: spec for spec in specs}


COMMANDS: dict[str, Spec[Any]] = _table(
    Spec(
        Help,
        "help",
        "this list; help COMMAND: one of them",
        lambda words: Help(),
        role=None,
        answered=Answered.AT_ONCE,
    ),
    Spec(
        Status,
        "status [IMAGE] [--json]",
        "staging / production / fallback with SHA, age, who moved them",
        _status,
        options=frozenset({"--json"}),
    ),
    Spec(
        Versions,
        "versions IMAGE [--limit N] [--before CURSOR] [--json]",
        "recorded versions, newest first, with test results and approvals (a page at a time)",
        _versions,
        options=frozenset({"--json", "--limit", "--before"}),
    ),
    Spec(
        Build,
        "build IMAGE [REF]",
        "run the staging pipeline at REF (owners)",
        _build,
        role=Role.OWNER,
        changes=True,
        answered=Answered.AT_ONCE,
    ),
    Spec(
        Approve,
        "approve IMAGE [SHA]",
        "approve the version in staging, or SHA (testers)",
        _approve,
        role=Role.TESTER,
        changes=True,
        answered=Answered.AT_ONCE,
        concerns=lambda command: command.sha or Env.STAGING,
    ),
    Spec(
        Reject,
        "reject IMAGE [SHA] REASON",
        "block promotion of that SHA until approved or forced (testers)",
        _reject,
        options=frozenset({"--reason"}),
        role=Role.TESTER,
        changes=True,
        answered=Answered.AT_ONCE,
        concerns=lambda command: command.sha or Env.STAGING,
    ),
    Spec(
        Promote,
        "promote IMAGE [--dry-run] [--force --reason R]",
        "fallback := production, production := staging (owners)",
        _promote,
        options=frozenset({"--dry-run", "--force", "--reason", "--yes"}),
        role=Role.OWNER,
        changes=lambda command: not command.dry_run,
        answered=_change_answered,
        confirm=True,
        slow=True,
        concerns=lambda command: Env.STAGING,
    ),
    Spec(
        Rollback,
        "rollback IMAGE [--to SHA [--force]] [--reason R]",
        "production := fallback, or SHA (owners)",
        _rollback,
        options=frozenset({"--to", "--reason", "--force", "--yes"}),
        role=Role.OWNER,
        changes=True,
        answered=_change_answered,
        confirm=True,
        slow=True,
        concerns=lambda command: command.to or Env.PRODUCTION,
    ),
    Spec(
        Instance,
        "instance IMAGE [--env ENV] [--name NAME]",
        "a notebook instance pinned to the environment's SHA",
        _instance,
        options=frozenset({"--env", "--name"}),
        role=lambda command: Role.TESTER if command.env == Env.STAGING else Role.USER,
        changes=True,
        answered=Answered.AT_ONCE,
        concerns=lambda command: command.env,
        action=lambda command: f"an instance from {command.env.value}",
    ),
    Spec(
        Instances,
        "instances [IMAGE] [--stop NAME]",
        "list instances; stop yours (owners: any)",
        _instances,
        options=frozenset({"--stop", "--json"}),
        changes=lambda command: command.stop is not None,
        # Stopping asks the backend (a cloud call on gcp): a job.
        answered=lambda command: Answered.QUEUED if command.stop else Answered.LATER,
    ),
    Spec(
        History,
        "history IMAGE [SHA] [--limit N] [--before CURSOR] [--json]",
        "the audit log of the image, or of one SHA, newest first (a page at a time)",
        _history,
        options=frozenset({"--json", "--limit", "--before"}),
        concerns=lambda command: command.sha,
    ),
    Spec(
        Diff,
        "diff IMAGE [FROM] [TO]",
        "base image and package changes between two versions",
        _diff,
        options=frozenset({"--json"}),
        slow=True,
    ),
    Spec(
        Freeze,
        "freeze IMAGE REASON",
        "block promotions and rollbacks-to-SHA (owners)",
        _freeze,
        options=frozenset({"--reason"}),
        role=Role.OWNER,
        changes=True,
        answered=Answered.AT_ONCE,
    ),
    Spec(
        Unfreeze,
        "unfreeze IMAGE",
        "lift a freeze (owners)",
        _unfreeze,
        role=Role.OWNER,
        changes=True,
        answered=Answered.AT_ONCE,
    ),
)
USAGE: Mapping[str, str] = {name: spec.usage for name, spec in COMMANDS.items()}


def spec_of(command: Command) -> Spec[Any]:
    return COMMANDS[command.name]


def reads_only(command: Command) -> bool:
    """True when COMMAND changes nothing (so a retried request needs no idempotency key)."""
    return not _decide(spec_of(command).changes, command)


# -- parsing --------------------------------------------------------------------------------


def parse(text: str) -> Command:
    """TEXT as it follows `/nbenv` (Slack, the console shell): cut into words here."""
    _check_length(len(text))
    return parse_words(split_words(text.strip()))


def parse_words(words: Sequence[str]) -> Command:
    """WORDS as a shell already cut them (the CLI's arguments): not joined and cut again,
    so what a word holds (quotes, blanks) is what the command gets."""
    _check_length(sum(len(word) for word in words) + max(len(words) - 1, 0))
    if not words:
        return Help()
    name, rest = words[0].lower(), words[1:]
    spec = COMMANDS.get(name)
    if spec is None:
        raise BadInput(f"unknown command {words[0]!r}: try `/nbenv help`")
    flags: dict[str, str | bool] = {}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        flag, eq, inline = word.partition("=")
        if flag in _FLAGS_WITH_VALUE:
            if eq:
                value = [inline]
            else:
                if i + 1 >= len(rest):
                    raise BadInput(f"{flag} needs a value. Usage: /nbenv {spec.usage}")
                value = [rest[i + 1]]
                i += 1
            if flag in _FLAGS_TAKING_THE_REST:  # `--reason disk is full` needs no quotes
                while i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                    value.append(rest[i + 1])
                    i += 1
            flags[flag] = " ".join(value)
        elif word in _BOOL_FLAGS:
            flags[word] = True
        elif word.startswith("--"):
            shown = word if word.isprintable() else repr(word)  # one line, whatever it holds
            raise BadInput(f"unknown option {shown}. Usage: /nbenv {spec.usage}")
        else:
            positional.append(word)
        i += 1
    for flag in flags:
        if flag not in spec.options:
            raise BadInput(f"{flag} does not apply to {name}. Usage: /nbenv {spec.usage}")
    return spec.make(Words(name, positional, flags))


def _check_length(length: int) -> None:
    if length > MAX_COMMAND:
        raise BadInput(
            f"the command is {length:,} characters long: at most {MAX_COMMAND:,} "
            f"(a reason at most {MAX_REASON:,})"
        )


def _env_or_sha(word: str) -> str:
    if word.lower() in {e.value for e in Env}:
        return word.lower()
    return check_sha_ref(word)


# -- as plain data (a button's value, a queued job) ------------------------------------------


def from_fields(data: Any, *, allowed: Callable[[Spec[Any]], bool]) -> Command:
    """The command plain DATA stands for, checked like typed input; refused unless ALLOWED
    says a command of its kind may come this way."""
    spec = COMMANDS.get(data.get("name")) if isinstance(data, dict) else None
    if spec is None or not allowed(spec):
        raise BadInput("this button or job carries no command nbenv can run")
    known_names = {known.name for known in dataclasses.fields(spec.type)}
    for key in data:
        if key != "name" and key not in known_names:
            raise BadInput(
                f"this button carries {str(key)[:40]!r}, which {spec.name} does not take: "
                "nothing was changed"
            )
    values: dict[str, Any] = {}
    for known in dataclasses.fields(spec.type):
        if known.name not in data:
            continue
        value = data[known.name]
        if known.name == "env":
            value = parse_env(value) if isinstance(value, str) else value
        kind: type = str
        if isinstance(known.default, bool):
            kind = bool
        elif isinstance(known.default, int):
            kind = int
        elif known.name == "env":
            kind = Env
        unset = value is None and known.default is None
        if not (unset or type(value) is kind):  # `type`: True is an int, but not a limit
            raise BadInput(f"this button carries a malformed {known.name}: nothing was changed")
        values[known.name] = value
    try:
        return spec.type(**values)
    except TypeError:  # a field the command needs is missing
        raise BadInput("this button or job carries an incomplete command") from None


def help_text() -> str:
    lines = ["*nbenv* — notebook image upgrades. Commands:"]
    lines += [f"• `/nbenv {spec.usage}`" for spec in COMMANDS.values()]
    lines += [
        "A REASON runs to the end of the command or to the next `--option`: no quotes "
        f"needed (at most {MAX_REASON:,} characters). `promote --force` overrides a "
        "rejection, a freeze window or a known vulnerability at or above the image's "
        "`block_on_severity` (gcp); `rollback --to SHA --force` uses a revoked SHA or "
        "overrides a freeze window; both need `--reason R`."
    ]
    return "\n".join(lines)
