"""Several instances of nbenv on one database, as Cloud Run runs them.

`Deployment` starts N `nbenv serve` processes and M relay processes (functions-framework
with `relay_build_status`), all on one database and one fake Slack, and gives a test the
handles it needs to feed them and to hurt them:

* `bots[i]` (tests.slack.bot.BotServer): signed slash commands, button presses, events;
* `relays[i]` (tests.builds.process.FunctionProcess): CloudEvents carrying Build resources;
* `bot_worker_pid(i)`: the gunicorn worker that serves requests (its master only forks);
* `slack.kill_on(...)` (SlackWithHooks): SIGKILL whichever process makes a matching Slack
  call, before Slack has taken it (or, with after=True, once it has) — a process killed
  mid-request.

Each process gets its own Slack token, so the fake Slack knows who is calling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.builds.process import FunctionProcess
from tests.slack.bot import BotServer
from tests.support.slack_api import FakeSlackApi


def child_pids(pid: int) -> list[int]:
    """The direct children of process PID (Linux /proc)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listing:
                children.extend(int(word) for word in listing.read().split())
        except OSError:
            continue
    return children


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


_START_ATTEMPTS = 3


@dataclass
class _KillHook:
    """SIGKILL the caller of the COUNT-th Slack call for which MATCH is true."""

    match: Callable[[str, dict[str, Any], str | None], bool]
    victims: dict[str, int]  # token → pid, read when the hook fires
    count: int = 1
    after: bool = False  # Slack takes the call first; the caller dies before the answer
    fired: threading.Event = field(default_factory=threading.Event)
    killed: str | None = None  # the token of the process killed
    at: float = 0.0  # when (time.time())


class SlackWithHooks(FakeSlackApi):
    """The fake Slack, able to kill the process making a call before answering it.

    The call is recorded as failed and never answered: the caller is gone."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[_KillHook] = []

    def kill_on(
        self,
        match: Callable[[str, dict[str, Any], str | None], bool],
        victims: dict[str, int],
        *,
        count: int = 1,
        after: bool = False,
    ) -> _KillHook:
        """MATCH(method, args, token): the calls that count; VICTIMS: token → pid; AFTER:
        the call takes effect in Slack before its caller is killed."""
        hook = _KillHook(match, victims, count, after)
        with self._cond:
            self._hooks.append(hook)
        return hook

    def _handle(
        self, method: str, args: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        with self._cond:
            for hook in list(self._hooks):
                if token not in hook.victims or not hook.match(method, args, token):
                    continue
                hook.count -= 1
                if hook.count > 0:
                    continue
                self._hooks.remove(hook)
                answered = super()._handle(method, args, headers) if hook.after else None
                with contextlib.suppress(ProcessLookupError):  # gone already: as good
                    os.kill(hook.victims[token], signal.SIGKILL)
                hook.killed, hook.at = token, time.time()
                hook.fired.set()
                if answered is not None:
                    return answered  # to nobody: the caller is gone
                self._state.failed.append(_killed_call(method, args, headers))
                return 599, {}, "killed"
        return super()._handle(method, args, headers)


def _killed_call(method: str, args: dict[str, Any], headers: dict[str, str]) -> Any:
    from tests.support.slack_api import Call

    return Call(method, args, headers, None, 599)


class Deployment:
    """BOTS `nbenv serve` processes and RELAYS relay processes on DB_URL and SLACK."""

    def __init__(
        self,
        workdir: Path,
        *,
        config: Path,
        db_url: str,
        slack: SlackWithHooks,
        bots: int = 2,
        relays: int = 2,
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.db_url = db_url
        self.slack = slack
        self.bots = [
            BotServer(
                config=config,
                db_url=db_url,
                home=workdir / f"bot{n}",
                slack=slack,
                SLACK_BOT_TOKEN=bot_token(n),
            )
            for n in range(bots)
        ]
        self.relays = [self._relay(n) for n in range(relays)]

    def _relay(self, n: int) -> FunctionProcess:
        env = {
            "NBENV_CONFIG": str(self.config),
            "NBENV_DATABASE_URL": self.db_url,
            "SLACK_API_URL": self.slack.base_url,
            "SLACK_BOT_TOKEN": relay_token(n),
            "NBENV_HOME": str(self.workdir / f"relay{n}"),
        }
        return FunctionProcess(env, log_path=self.workdir / f"relay{n}.log")

    def start(self) -> Deployment:
        # Started together: each start is mostly waiting for imports.
        with ThreadPoolExecutor(len(self.bots) + len(self.relays)) as pool:
            list(pool.map(self._start_bot, range(len(self.bots))))
            list(pool.map(self._start_relay, range(len(self.relays))))
        return self

    def _start_bot(self, n: int) -> None:
        for attempt in range(_START_ATTEMPTS):
            try:
                self.bots[n].start()  # on a fresh free port each time
                return
            except RuntimeError as error:
                # The port was free when picked, but someone else bound it first.
                if "Address already in use" not in str(error) or attempt == _START_ATTEMPTS - 1:
                    raise

    def _start_relay(self, n: int) -> None:
        for attempt in range(_START_ATTEMPTS):
            try:
                self.relays[n].start()
                return
            except RuntimeError:
                if attempt == _START_ATTEMPTS - 1:
                    raise
                self.relays[n] = self._relay(n)  # a fresh port

    def stop(self) -> None:
        def stop(process: BotServer | FunctionProcess) -> None:
            try:
                process.stop()
            except Exception:  # the others stop regardless
                return

        # Together: each waits a moment for its process to finish.
        with ThreadPoolExecutor(len(self.bots) + len(self.relays)) as pool:
            list(pool.map(stop, [*self.bots, *self.relays]))

    def revive(self) -> None:
        """Processes killed come back: a fresh relay instance in place of a dead one (as
        Cloud Functions starts one); gunicorn forks a new bot worker by itself, which is
        waited for."""
        for n, relay in enumerate(self.relays):
            if relay.process is not None and relay.process.poll() is not None:
                relay.process = None
                self._start_relay_fresh(n)
        for n, bot in enumerate(self.bots):
            self.bot_worker_pid(n, timeout=30)
            # Kept-alive connections were the dead worker's: Slack's next request opens a
            # new one, which the new worker accepts.
            bot.http = requests.Session()
            wait_healthy(bot)

    def _start_relay_fresh(self, n: int) -> None:
        self.relays[n] = self._relay(n)
        self._start_relay(n)

    def bot_worker_pid(self, n: int, timeout: float = 10.0) -> int:
        """The pid of the gunicorn worker serving bot N (the one a SIGKILL should hit)."""
        process = self.bots[n].process
        assert process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The master's child that serves the socket: the worker (its answer process,
            # a child of the worker, holds a copy of the socket but is no child of the master).
            inode = _listening_inode(self.bots[n].port)
            serving = [
                pid
                for pid in child_pids(process.pid)
                if inode is not None and process_alive(pid) and _holds_socket(pid, inode)
            ]
            if serving:
                return serving[0]
            time.sleep(0.05)
        raise AssertionError(f"bot {n} has no gunicorn worker")

    def bot_worker_pids(self) -> list[int]:
        return [self.bot_worker_pid(n) for n in range(len(self.bots))]

    def tokens_to_pids(self) -> dict[str, int]:
        """Every process's Slack token → the pid that uses it."""
        found = {bot_token(n): self.bot_worker_pid(n) for n in range(len(self.bots))}
        for n, relay in enumerate(self.relays):
            assert relay.process is not None
            found[relay_token(n)] = relay.process.pid
        return found


def wait_healthy(bot: BotServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if bot.http.get(f"{bot.url}/healthz", timeout=5).status_code == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"bot at {bot.url} did not come back")


def _listening_inode(port: int) -> str | None:
    """The inode of the TCP socket listening on local port PORT (/proc/net/tcp)."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                return fields[9]
    return None


def _holds_socket(pid: int, inode: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            continue
    return False


def bot_token(n: int) -> str:
    return f"xoxb-bot-{n}"


def relay_token(n: int) -> str:
    return f"xoxb-relay-{n}"


@contextmanager
def deployment(
    workdir: Path, *, config: Path, db_url: str, bots: int = 2, relays: int = 2
) -> Iterator[Deployment]:
    with SlackWithHooks() as slack:
        running = Deployment(
            workdir, config=config, db_url=db_url, slack=slack, bots=bots, relays=relays
        )
        try:
            yield running.start()
        finally:
            running.stop()
