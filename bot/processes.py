"""Whether a process is still there, for the processes nbenv starts and watches."""

from __future__ import annotations

import contextlib
import os


def alive(pid: int) -> bool:
    """True while PID runs; a child of ours that exited is reaped (a zombie would pass
    the signal-0 probe)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: there all the same
        return True
    return True
