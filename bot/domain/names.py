"""Names and identifiers: images, environments, SHAs, Slack user IDs, who acts."""

from __future__ import annotations

import re
from enum import StrEnum

from bot.domain.errors import BadInput

# Docker's rule for one repository path component.
_IMAGE_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_SHA_PREFIX = re.compile(r"[0-9a-f]{7,40}")
# Slack user IDs start with U (W on Enterprise Grid); the rest is upper-case alphanumeric.
_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,20}")
# Cloud Build's IDs are UUIDs; the local pipeline's are shorter. Never whitespace.
BUILD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
PIPELINE_PREFIX = "build:"
_SHOWN = 40  # at most this much of a malformed ID is quoted back
MAX_IMAGE_NAME = 128
SHORT_SHA_MIN = 7
# A Workbench instance ID (Notebooks API v2 `instanceId`; gcloud workbench instances
# reference: "1 to 63 characters long and contain only lowercase letters, numeric
# characters, and dashes. The first character must be a lowercase letter and the last
# character cannot be a dash"). Also what GCE requires of the VM's name (RFC 1035).
INSTANCE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
MAX_INSTANCE_NAME = 63
# Put before an image name that does not start with a letter (`3d.viz`): "notebook".
_INSTANCE_PREFIX = "nb-"


class Env(StrEnum):
    STAGING = "staging"
    PRODUCTION = "production"
    FALLBACK = "fallback"


def image_name_problem(name: str) -> str | None:
    """Why NAME is not a valid image name, or None when it is."""
    if not name:
        return "an image name cannot be empty"
    if len(name) > MAX_IMAGE_NAME:
        return f"image name is {len(name)} characters long; at most {MAX_IMAGE_NAME} are allowed"
    if not _IMAGE_NAME.fullmatch(name):
        return (
            f"{name!r} is not a valid image name: use lowercase letters and digits separated "
            "by single '.' or '_', by '__', or by one or more '-' (e.g. nlp.keras-batch)"
        )
    return None


def instance_name(image: str, env: str, sha: str, salt: str) -> str:
    """The generated name of an instance of IMAGE from ENV at SHA: `IMAGE-ENV4-SHA7-SALT`,
    with IMAGE's separators turned into '-', cut to fit, and `nb-` in front when IMAGE
    does not start with a letter. SALT (lowercase hex) keeps two requests apart. Every
    valid image name gives a name that matches INSTANCE_NAME."""
    suffix = f"-{env[:4]}-{sha[:SHORT_SHA_MIN]}-{salt}".lower()
    base = re.sub(r"[^a-z0-9]+", "-", image.lower()).strip("-")
    if not base[:1].isalpha():
        base = _INSTANCE_PREFIX + base
    return base[: MAX_INSTANCE_NAME - len(suffix)].rstrip("-") + suffix


def check_image_name(name: str) -> str:
    problem = image_name_problem(name)
    if problem:
        raise BadInput(problem)
    return name


def is_full_sha(text: str) -> bool:
    return bool(_FULL_SHA.fullmatch(text))


def check_full_sha(text: str) -> str:
    sha = text.strip().lower()
    if not is_full_sha(sha):
        raise BadInput(f"{text!r} is not a commit SHA: expected 40 hexadecimal digits")
    return sha


def check_sha_ref(text: str) -> str:
    """A full SHA or a prefix of 7+ hex digits, lowercased."""
    sha = text.strip().lower()
    if not _SHA_PREFIX.fullmatch(sha):
        raise BadInput(
            f"{text!r} is not a commit SHA: expected {SHORT_SHA_MIN} to 40 hexadecimal digits"
        )
    return sha


def looks_like_sha(text: str) -> bool:
    return bool(_SHA_PREFIX.fullmatch(text.lower()))


def parse_env(text: str) -> Env:
    try:
        return Env(text.lower())
    except ValueError:
        choices = ", ".join(e.value for e in Env)
        raise BadInput(f"unknown environment {text!r}: use one of {choices}") from None


def user_id_problem(text: object) -> str | None:
    """Why TEXT is not a Slack user ID, or None when it has the shape of one."""
    if isinstance(text, str) and _SLACK_USER.fullmatch(text):
        return None
    return f"{_quoted(text)} is not a Slack user ID (like U01ABCDEF)"


def _quoted(value: object) -> str:
    """VALUE as an error quotes it: cut short, since a hostile ID may be any length."""
    if isinstance(value, str) and len(value) > _SHOWN:
        value = value[:_SHOWN] + "…"
    return repr(value)[: _SHOWN + 10]


def check_user_id(text: str) -> str:
    problem = user_id_problem(text)
    if problem:
        raise BadInput(problem)
    return text


class Person(str):
    """A Slack user ID, checked where it entered nbenv: how a person asks the service.

    Constructing one checks the shape, so an ID that is not a Slack user's (`build:x`,
    `alice`) never becomes a Person: only a `Pipeline` acts with the pipeline's rights.
    """

    __slots__ = ()

    def __new__(cls, user_id: str) -> Person:
        return super().__new__(cls, check_user_id(user_id))


class Pipeline(str):
    """A build of the pipeline, acting under its own name `build:<build id>`.

    Made only where a build speaks for itself: the build relay (a Cloud Build event, or
    the local pipeline's) and `nbenv publish --build-id`. Never from what a person
    typed or Slack sent: those are Persons.
    """

    __slots__ = ()

    def __new__(cls, build_id: str) -> Pipeline:
        if not isinstance(build_id, str) or not BUILD_ID.fullmatch(build_id):
            raise BadInput(
                f"{_quoted(build_id)} is not a build ID (letters, digits, '.', '_', ':', '-')"
            )
        return super().__new__(cls, PIPELINE_PREFIX + build_id)

    @property
    def build_id(self) -> str:
        return self[len(PIPELINE_PREFIX) :]

    def __getnewargs__(self) -> tuple[str]:  # pickling makes it again from the build ID
        return (self.build_id,)


# Who the service acts for. A plain string given to the service is taken as a Person.
Actor = Person | Pipeline


def short(sha: str | None) -> str:
    return sha[:SHORT_SHA_MIN] if sha else "—"
