"""Parse the text that follows `/nbenv` into a Command.

The same grammar serves Slack, the CLI and the console shell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.domain.errors import BadInput
from bot.domain.names import (
    INSTANCE_NAME,
    Env,
    check_image_name,
    check_sha_ref,
    looks_like_sha,
    parse_env,
)

USAGE = {
    "help": "help",
    "status": "status [IMAGE] [--json]",
    "versions": "versions IMAGE [--json]",
    "build": "build IMAGE [REF]",
    "approve": "approve IMAGE [SHA]",
    "reject": "reject IMAGE [SHA] REASON",
    "promote": "promote IMAGE [--dry-run] [--force --reason R]",
    "rollback": "rollback IMAGE [--to SHA [--force]] [--reason R]",
    "instance": "instance IMAGE [--env ENV] [--name NAME]",
    "instances": "instances [IMAGE] [--stop NAME]",
    "history": "history IMAGE [SHA] [--json]",
    "diff": "diff IMAGE [FROM] [TO]",
    "freeze": "freeze IMAGE REASON",
    "unfreeze": "unfreeze IMAGE",
}
READ_ONLY = frozenset({"help", "status", "versions", "history", "diff", "instances"})
_FLAGS_WITH_VALUE = {"--to", "--reason", "--env", "--name", "--stop"}
_BOOL_FLAGS = {"--dry-run", "--force", "--json", "--yes"}
_FLAGS_TAKING_THE_REST = {"--reason"}  # a reason runs on to the next option, quoted or not

MAX_COMMAND = 4000  # characters of the text after /nbenv: room for any command and its reason
MAX_REASON = 1000  # characters of a reason, as many as the reject dialog lets a tester type


@dataclass(frozen=True)
class Command:
    name: str
    image: str | None = None
    sha: str | None = None  # a full SHA or a 7+ digit prefix, lowercased
    ref: str | None = None  # build: branch, tag or SHA
    reason: str | None = None
    env: Env | None = None
    instance_name: str | None = None
    to: str | None = None
    diff_from: str | None = None
    diff_to: str | None = None
    stop: str | None = None
    dry_run: bool = False
    force: bool = False
    json: bool = False
    confirmed: bool = False  # --yes: skip the interactive confirmation

    def __post_init__(self) -> None:
        # Every way a command is made (typed, a button, the reject dialog, a queued job)
        # passes here: a reason longer than the dialog allows is refused everywhere alike.
        if self.reason is not None and len(self.reason) > MAX_REASON:
            raise BadInput(
                f"the reason is {len(self.reason):,} characters long: at most {MAX_REASON:,}, "
                "please shorten it"
            )

    @property
    def read_only(self) -> bool:
        return self.name in READ_ONLY or (self.name == "promote" and self.dry_run)


_BLANKS = " \t\r\n"  # what separates words, as in a POSIX shell (and shlex)
_BLANK_RUN = re.compile(r"[ \t\r\n]+")
_PLAIN_RUN = re.compile(r"[^ \t\r\n'\"\\]+")
_DOUBLE_QUOTED_RUN = re.compile(r'[^"\\]+')
_SPECIAL = re.compile(r"['\"\\]")


def split_words(text: str) -> list[str]:
    """TEXT cut into words the way `shlex.split` (a POSIX shell) cuts it — quotes, backslash
    escapes — in time linear in the length of TEXT (shlex grows each word one character
    at a time, which is quadratic: 23 s for a 1 MB word)."""
    if not _SPECIAL.search(text):  # the usual case: words and blanks only
        return [word for word in _BLANK_RUN.split(text) if word]
    words: list[str] = []
    parts: list[str] | None = None  # the pieces of the word being read; None between words
    at, end = 0, len(text)
    while at < end:
        char = text[at]
        if char in _BLANKS:
            if parts is not None:
                words.append("".join(parts))
                parts = None
            at = _end_of(_BLANK_RUN, text, at)
            continue
        if parts is None:
            parts = []
        if char == "'":  # nothing is special up to the closing quote
            close = text.find("'", at + 1)
            if close < 0:
                raise _unreadable("No closing quotation")
            parts.append(text[at + 1 : close])
            at = close + 1
        elif char == '"':
            at = _read_double_quoted(text, at + 1, parts)
        elif char == "\\":
            if at + 1 >= end:
                raise _unreadable("No escaped character")
            parts.append(text[at + 1])
            at += 2
        else:
            run_end = _end_of(_PLAIN_RUN, text, at)
            parts.append(text[at:run_end])
            at = run_end
    if parts is not None:
        words.append("".join(parts))
    return words


def _end_of(run: re.Pattern[str], text: str, at: int) -> int:
    found = run.match(text, at)
    return found.end() if found else at


def _read_double_quoted(text: str, at: int, parts: list[str]) -> int:
    """The inside of "…" from AT into PARTS (a backslash escapes only `"` and itself, as in
    a shell); where reading goes on after the closing quote."""
    while True:
        run_end = _end_of(_DOUBLE_QUOTED_RUN, text, at)
        parts.append(text[at:run_end])
        at = run_end
        if at < len(text) and text[at] == '"':
            return at + 1
        if at >= len(text):
            raise _unreadable("No closing quotation")
        if at + 1 >= len(text):  # a backslash, then nothing
            raise _unreadable("No escaped character")
        escaped = text[at + 1]  # text[at] is a backslash
        parts.append(escaped if escaped in '"\\' else "\\" + escaped)
        at += 2


def _unreadable(why: str) -> BadInput:
    return BadInput(f"could not read the command: {why}")


def parse(text: str) -> Command:
    """TEXT as it follows `/nbenv` (Slack, the console shell): cut into words here."""
    _check_length(len(text))
    return parse_words(split_words(text.strip()))


def parse_words(words: Sequence[str]) -> Command:
    """WORDS as a shell already cut them (the CLI's arguments): not joined and cut again,
    so what a word holds (quotes, blanks) is what the command gets."""
    _check_length(sum(len(word) for word in words) + max(len(words) - 1, 0))
    if not words:
        return Command("help")
    name, rest = words[0].lower(), words[1:]
    if name not in USAGE:
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
                    raise BadInput(f"{flag} needs a value. Usage: /nbenv {USAGE[name]}")
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
            raise BadInput(f"unknown option {word}. Usage: /nbenv {USAGE[name]}")
        else:
            positional.append(word)
        i += 1
    return _build(name, positional, flags)


def _check_length(length: int) -> None:
    if length > MAX_COMMAND:
        raise BadInput(
            f"the command is {length:,} characters long: at most {MAX_COMMAND:,} "
            f"(a reason at most {MAX_REASON:,})"
        )


def _need_image(name: str, positional: list[str]) -> str:
    if not positional:
        raise BadInput(f"missing IMAGE. Usage: /nbenv {USAGE[name]}")
    return check_image_name(positional[0])


def _too_many(name: str, extra: list[str]) -> None:
    if extra:
        raise BadInput(f"unexpected {' '.join(extra)!r}. Usage: /nbenv {USAGE[name]}")


def _allowed(name: str, flags: dict[str, str | bool], allowed: set[str]) -> None:
    for flag in flags:
        if flag not in allowed:
            raise BadInput(f"{flag} does not apply to {name}. Usage: /nbenv {USAGE[name]}")


def _build(name: str, pos: list[str], flags: dict[str, str | bool]) -> Command:
    text = {k: v for k, v in flags.items() if isinstance(v, str)}
    json_out = bool(flags.get("--json"))
    if name == "help":
        return Command("help")
    if name == "status":
        _allowed(name, flags, {"--json"})
        _too_many(name, pos[1:])
        image = check_image_name(pos[0]) if pos else None
        return Command(name, image=image, json=json_out)
    if name in ("versions", "unfreeze"):
        _allowed(name, flags, {"--json"} if name == "versions" else set())
        image = _need_image(name, pos)
        _too_many(name, pos[1:])
        return Command(name, image=image, json=json_out)
    if name == "history":
        _allowed(name, flags, {"--json"})
        image = _need_image(name, pos)
        _too_many(name, pos[2:])
        sha = check_sha_ref(pos[1]) if len(pos) > 1 else None
        return Command(name, image=image, sha=sha, json=json_out)
    if name == "build":
        _allowed(name, flags, set())
        image = _need_image(name, pos)
        _too_many(name, pos[2:])
        return Command(name, image=image, ref=pos[1] if len(pos) > 1 else None)
    if name == "approve":
        _allowed(name, flags, set())
        image = _need_image(name, pos)
        _too_many(name, pos[2:])
        return Command(name, image=image, sha=check_sha_ref(pos[1]) if len(pos) > 1 else None)
    if name == "reject":
        _allowed(name, flags, {"--reason"})
        image = _need_image(name, pos)
        rest = pos[1:]
        sha = None
        if rest and looks_like_sha(rest[0]) and (len(rest) > 1 or "--reason" in text):
            sha, rest = check_sha_ref(rest[0]), rest[1:]
        reason = text.get("--reason") or " ".join(rest).strip()
        if not reason:
            raise BadInput(f"reject needs a REASON. Usage: /nbenv {USAGE[name]}")
        return Command(name, image=image, sha=sha, reason=reason)
    if name == "promote":
        _allowed(name, flags, {"--dry-run", "--force", "--reason", "--yes"})
        image = _need_image(name, pos)
        _too_many(name, pos[1:])
        force = bool(flags.get("--force"))
        reason = text.get("--reason")
        if force and not (reason and reason.strip()):
            raise BadInput("--force needs --reason R: say why the rejection is overridden")
        return Command(
            name,
            image=image,
            dry_run=bool(flags.get("--dry-run")),
            force=force,
            reason=reason,
            confirmed=bool(flags.get("--yes")),
        )
    if name == "rollback":
        _allowed(name, flags, {"--to", "--reason", "--force", "--yes"})
        image = _need_image(name, pos)
        _too_many(name, pos[1:])
        to = check_sha_ref(text["--to"]) if "--to" in text else None
        force = bool(flags.get("--force"))
        if force and to is None:
            raise BadInput(
                "--force applies to `rollback IMAGE --to SHA`: it allows a revoked SHA. "
                f"Usage: /nbenv {USAGE[name]}"
            )
        if force and not (text.get("--reason") or "").strip():
            raise BadInput("--force needs --reason R: say why the revoked SHA is used again")
        return Command(
            name,
            image=image,
            to=to,
            reason=text.get("--reason"),
            force=force,
            confirmed=bool(flags.get("--yes")),
        )
    if name == "instance":
        _allowed(name, flags, {"--env", "--name"})
        image = _need_image(name, pos)
        _too_many(name, pos[1:])
        env = parse_env(text["--env"]) if "--env" in text else Env.PRODUCTION
        instance_name = text.get("--name")
        if instance_name is not None:
            check_instance_name(instance_name)
        return Command(name, image=image, env=env, instance_name=instance_name)
    if name == "instances":
        _allowed(name, flags, {"--stop", "--json"})
        _too_many(name, pos[1:])
        image = check_image_name(pos[0]) if pos else None
        return Command(name, image=image, stop=text.get("--stop"), json=json_out)
    if name == "diff":
        _allowed(name, flags, {"--json"})
        image = _need_image(name, pos)
        _too_many(name, pos[3:])
        refs = [_env_or_sha(word) for word in pos[1:]]
        return Command(
            name,
            image=image,
            diff_from=refs[0] if refs else None,
            diff_to=refs[1] if len(refs) > 1 else None,
            json=json_out,
        )
    if name == "freeze":
        _allowed(name, flags, {"--reason"})
        image = _need_image(name, pos)
        reason = text.get("--reason") or " ".join(pos[1:]).strip()
        if not reason:
            raise BadInput(f"freeze needs a REASON. Usage: /nbenv {USAGE[name]}")
        return Command(name, image=image, reason=reason)
    raise BadInput(f"unknown command {name!r}")  # pragma: no cover - USAGE guards this


def _env_or_sha(word: str) -> str:
    if word.lower() in {e.value for e in Env}:
        return word.lower()
    return check_sha_ref(word)


def check_instance_name(name: str) -> str:
    if not INSTANCE_NAME.fullmatch(name):
        raise BadInput(
            f"{name!r} is not a valid instance name: lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    return name


def help_text() -> str:
    lines = ["*nbenv* — notebook image upgrades. Commands:"]
    lines += [f"• `/nbenv {usage}`" for usage in USAGE.values()]
    lines += [
        "A REASON runs to the end of the command or to the next `--option`: no quotes "
        f"needed (at most {MAX_REASON:,} characters). `promote --force` overrides a "
        "rejection; `rollback --to SHA --force` uses a revoked SHA; both need `--reason R`."
    ]
    return "\n".join(lines)
