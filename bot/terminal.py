"""Who runs nbenv at a terminal: shared by the programs a person runs there (the CLI,
the console), so that none of them imports another for it."""

from __future__ import annotations

import argparse
import os

from bot.domain.errors import BadInput
from bot.domain.names import Person


def person(args: argparse.Namespace) -> Person | None:
    """Who runs the command: --as USER or $NBENV_USER, a Slack user ID (never the pipeline)."""
    source, user = (
        ("--as", args.as_user) if args.as_user else ("NBENV_USER", os.environ.get("NBENV_USER"))
    )
    if not user:
        return None
    try:
        return Person(user)
    except BadInput as error:
        raise BadInput(f"{source}: {error.message}") from None
