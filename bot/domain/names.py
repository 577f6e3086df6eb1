"""Names and identifiers: images, environments, SHAs, Slack user IDs."""

from __future__ import annotations

import re
from enum import StrEnum

from bot.domain.errors import BadInput

# Docker's rule for one repository path component.
_IMAGE_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_SHA_PREFIX = re.compile(r"[0-9a-f]{7,40}")
_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,}")
MAX_IMAGE_NAME = 128
SHORT_SHA_MIN = 7


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


def check_user_id(text: str) -> str:
    if not _SLACK_USER.fullmatch(text or ""):
        raise BadInput(f"{text!r} is not a Slack user ID (like U01ABCDEF)")
    return text


def short(sha: str | None) -> str:
    return sha[:SHORT_SHA_MIN] if sha else "—"
