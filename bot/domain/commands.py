"""Parse the text that follows `/nbenv` into a Command.

The same grammar serves Slack, the CLI and the console shell.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from bot.domain.errors import BadInput
from bot.domain.names import Env, check_image_name, check_sha_ref, looks_like_sha, parse_env

USAGE = {
    "help": "help",
    "status": "status [IMAGE] [--json]",
    "versions": "versions IMAGE [--json]",
    "build": "build IMAGE [REF]",
    "approve": "approve IMAGE [SHA]",
    "reject": "reject IMAGE [SHA] REASON",
    "promote": "promote IMAGE [--dry-run] [--force --reason R]",
    "rollback": "rollback IMAGE [--to SHA] [--reason R]",
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

    @property
    def read_only(self) -> bool:
        return self.name in READ_ONLY or (self.name == "promote" and self.dry_run)


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as error:
        raise BadInput(f"could not read the command: {error}") from None


def parse(text: str) -> Command:
    words = _split(text.strip())
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
                flags[flag] = inline
            else:
                if i + 1 >= len(rest):
                    raise BadInput(f"{flag} needs a value. Usage: /nbenv {USAGE[name]}")
                flags[flag] = rest[i + 1]
                i += 1
        elif word in _BOOL_FLAGS:
            flags[word] = True
        elif word.startswith("--"):
            raise BadInput(f"unknown option {word}. Usage: /nbenv {USAGE[name]}")
        else:
            positional.append(word)
        i += 1
    return _build(name, positional, flags)


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
        return Command(
            name,
            image=image,
            to=to,
            reason=text.get("--reason"),
            force=bool(flags.get("--force")),
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
    import re

    if not re.fullmatch(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", name):
        raise BadInput(
            f"{name!r} is not a valid instance name: lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    return name


def help_text() -> str:
    lines = ["*nbenv* — notebook image upgrades. Commands:"]
    lines += [f"• `/nbenv {usage}`" for usage in USAGE.values()]
    return "\n".join(lines)
