"""Which use case handles which command: the one map dispatch follows.

Explicit (not looked up by name), so grep and a type checker can follow a command to its
handler; `tests/core/test_command_table.py` checks every command of the table has one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.domain import commands as c
from bot.service import approvals, builds, environments, freezes, instances, reads
from bot.service.context import Asked, Context
from bot.service.replies import Reply

Handler = Callable[[Context, Asked[Any]], Reply]

HANDLERS: dict[type[c.Command], Handler] = {
    c.Help: reads.show_help,
    c.Status: reads.status,
    c.Versions: reads.versions,
    c.History: reads.history,
    c.Diff: reads.diff,
    c.Build: builds.build,
    c.Approve: approvals.approve,
    c.Reject: approvals.reject,
    c.Promote: environments.promote,
    c.Rollback: environments.rollback,
    c.Instance: instances.instance,
    c.Instances: instances.instances,
    c.Freeze: freezes.freeze,
    c.Unfreeze: freezes.unfreeze,
}
