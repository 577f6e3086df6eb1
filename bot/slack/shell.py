"""`nbenv shell`: the bot on the console — no Slack needed, scriptable through stdin.

Type `/nbenv …` as in Slack; `/as U…` switches who you are; a button is pressed by
typing its label (`Approve` presses the last Approve button shown); `/home` shows your
App Home; `/help` lists this. Channel messages and their threads are printed as text,
answers only you would see are marked "(only you)". Jobs (builds, instances, plans) run
inline, so a build has finished when the next prompt appears.

The console shares everything with Slack but the wire: the same interactions, service,
store, job queue and outbox; only the outbox's last step prints instead of calling the
Web API.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from bot.domain.names import Person
from bot.domain.notifications import Act
from bot.domain.text import to_plain as plain
from bot.service.runtime import Runtime
from bot.slack.interactions import Interactions, Outcome
from bot.slack.notifications import action_id
from bot.slack.outbox import OutboxSender
from bot.store.uow import Store

CONSOLE_URL = "console:"
MAX_LABEL = 75  # characters of a button's text in Slack

HELP = """\
/nbenv TEXT      run a command as in Slack (e.g. /nbenv status, /nbenv help)
/as USER         act as another Slack user ID (e.g. /as U02TESTER)
LABEL            press the last button shown with that label (e.g. Approve)
/home            show your App Home
/buttons         list the buttons you can press
/help            this list
/quit            leave (so does end of input)"""


@dataclass
class ShownButton:
    label: str
    action_id: str
    value: str
    response_url: str


class Console:
    """Prints what Slack would show, and remembers the buttons it printed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.buttons: dict[str, ShownButton] = {}
        self._ts = 0
        self._roots: dict[str, int] = {}  # root ts → its number in this session

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def block_lines(self, blocks: list[dict[str, Any]], response_url: str) -> list[str]:
        lines: list[str] = []
        for block in blocks:
            kind = block.get("type")
            if kind in ("section", "header"):
                if block.get("text"):
                    lines += plain(block["text"]["text"]).split("\n")
                for field in block.get("fields") or []:
                    lines += ["  " + part for part in plain(field["text"]).split("\n")]
            elif kind == "context":
                for element in block.get("elements") or []:
                    lines += plain(element.get("text", "")).split("\n")
            elif kind == "divider":
                lines.append("─" * 40)
            elif kind == "input":
                lines.append(f"✎ {block['label']['text']}")
            elif kind == "actions":
                labels = []
                for element in block.get("elements") or []:
                    if element.get("type") != "button":
                        continue
                    label = element["text"]["text"]
                    self.buttons[label.lower()] = ShownButton(
                        label, element["action_id"], element.get("value", ""), response_url
                    )
                    labels.append(f"[{label}]")
                lines.append(" ".join(labels))
        return lines

    def show(self, prefix: str, payload: dict[str, Any], response_url: str = "") -> None:
        blocks = payload.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        lines = (
            self.block_lines(blocks, response_url)
            if blocks
            else plain(str(payload.get("text", ""))).split("\n")
        )
        pad = " " * len(prefix)
        for index, line in enumerate(lines or [""]):
            self.say(f"{prefix if index == 0 else pad}{line}")

    def deliver(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The console's Web API: print the call the way Slack would show it."""
        if method == "chat.postMessage":
            self._ts += 1
            ts = f"{self._ts}.000000"
            channel = str(payload.get("channel"))
            thread = payload.get("thread_ts")
            if thread and str(thread) in self._roots:
                prefix = f"#{channel} ({self._roots[str(thread)]}) ↳ "
            else:
                self._roots[ts] = len(self._roots) + 1
                prefix = f"#{channel} ({self._roots[ts]}) "
            self.show(prefix, payload, "")
            return {"ok": True, "channel": channel, "ts": ts}
        if method == "chat.update":
            number = self._roots.get(str(payload.get("ts")), "?")
            self.show(f"#{payload.get('channel')} ({number}) ✎ ", payload)
            return {"ok": True, "channel": payload.get("channel"), "ts": payload.get("ts")}
        if method == "response_url":
            url = str(payload.get("url", ""))
            replaced = " (replaces the message above)" if payload.get("replace_original") else ""
            self.show(f"(only you{replaced}) ", payload, url)
            return {"ok": True}
        if method == "views.publish":
            self.show("(App Home) ", payload.get("view") or {})
            return {"ok": True}
        self.say(f"[{method}] {json.dumps(payload)[:200]}")
        return {"ok": True}


class ConsoleTransport:
    """The outbox's transport (bot.slack.outbox.Transport) on the console: what would go
    to Slack's Web API is printed."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def send(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.console.deliver(method, payload)

    def find_posted(self, channel: str, thread_ts: str | None, key: str) -> dict[str, Any] | None:
        return None  # a print cannot have half happened: nothing is ever unsure

    def check(self) -> None:
        return None  # the console never refuses the app


def console_sender(store: Store, console: Console) -> OutboxSender:
    """The outbox delivered to CONSOLE instead of Slack's Web API, as fast as it prints."""
    return OutboxSender(store, ConsoleTransport(console), pace=None)


class Shell:
    def __init__(self, runtime: Runtime, out: TextIO, user: str) -> None:
        self.runtime = runtime
        self.console = Console(out)
        self.sender = console_sender(runtime.store, self.console)
        self.interactions = Interactions(runtime.nbenv)
        self.user = Person(user)
        self.dialog: dict[str, Any] | None = None
        self.echo = False

    def settle(self) -> None:
        """Run queued jobs and deliver queued messages until nothing is left."""
        while True:
            ran = self.runtime.worker.run_until_idle()
            self.sender.drain(timeout_s=10, poll_s=0.02)
            if not ran:
                return

    def prompt(self) -> str:
        return f"{self.user}> " if self.dialog is None else "reason> "

    def feed(self, line: str) -> bool:
        """Handle one input line; False to stop."""
        line = line.strip()
        if self.echo and line:
            self.console.say(f"{self.prompt()}{line}")
        if not line or line.startswith("#"):
            return True
        if line in ("/quit", "/exit"):
            return False
        if self.dialog is not None:
            self._dialog_input(line)
        elif line == "/help":
            self.console.say(HELP)
        elif line.startswith("/as"):
            self._switch(line[3:].strip())
        elif line == "/home":
            self.console.show("(App Home) ", self.interactions.home(self.user))
        elif line == "/buttons":
            self.console.say(self._shown_labels() or "no buttons shown yet")
        elif line.startswith("/nbenv"):
            self._slash(line[len("/nbenv") :].strip())
        elif line.lower() in self.console.buttons:
            self._press(self.console.buttons[line.lower()])
        elif line.startswith("/"):
            self.console.say(f"not understood: {line!r} (type /help)")
        else:  # every other line is the label of a button to press
            self.console.say(self._not_shown(line))
        self.settle()
        return True

    def _shown_labels(self) -> str:
        return " ".join(f"[{b.label}]" for b in self.console.buttons.values())

    def _not_shown(self, label: str) -> str:
        if len(label) > MAX_LABEL:  # Slack's limit: anything longer is no button's label
            label = label[: MAX_LABEL - 1] + "…"
        shown = self._shown_labels()
        if not shown:
            return f"no {label!r} button is shown yet: no buttons so far (type /help)"
        return f"no {label!r} button is shown yet; buttons shown: {shown}"

    def _switch(self, user: str) -> None:
        from bot.domain.errors import NbenvError

        try:
            self.user = Person(user)
        except NbenvError as error:
            self.console.say(f"⚠️ {error.message}")
            return
        if not self.runtime.config.knows_user(self.user):
            self.console.say(f"(note: {user} is in no team of the config)")
        self.console.say(f"you are now {self.user}")

    def _slash(self, text: str) -> None:
        key = f"shell:{uuid.uuid4()}"
        url = f"{CONSOLE_URL}{key}"
        outcome = self.interactions.slash(self.user, text, key=key, response_url=url)
        if outcome.answer:
            self.console.show("(only you) ", outcome.answer, url)
        self._follow_up(outcome, url)

    def _follow_up(self, outcome: Outcome, url: str) -> None:
        """What Slack would get from the response_url after the ack."""
        if outcome.later is not None:
            self.console.deliver(
                "response_url",
                {
                    **self.interactions.compute(outcome.later),
                    "url": url,
                    "replace_original": outcome.replace,
                },
            )

    def _press(self, button: ShownButton) -> None:
        key = f"shell:{uuid.uuid4()}"
        response_url = button.response_url or f"{CONSOLE_URL}{key}"
        if button.action_id == action_id(Act.REJECT):
            outcome = self.interactions.reject_dialog(
                self.user, button.value, response_url=response_url
            )
            if outcome.dialog is not None:
                self.dialog = outcome.dialog
                self.console.show("(dialog) ", {"blocks": outcome.dialog["blocks"]})
                self.console.say("(type the reason, or /cancel)")
            self._follow_up(outcome, response_url)
            return
        outcome = self.interactions.press(
            self.user, button.action_id, button.value, key=key, response_url=response_url
        )
        self._follow_up(outcome, response_url)

    def _dialog_input(self, line: str) -> None:
        assert self.dialog is not None
        if line == "/cancel":
            self.dialog = None
            self.console.say("(dialog closed: nothing was changed)")
            return
        problem = self.interactions.submit_reject(
            self.user, self.dialog["private_metadata"], line, key=f"shell:{uuid.uuid4()}"
        )
        if problem:
            self.console.say(f"(dialog) ⚠️ {plain(problem)}")
            self.console.say("(type the reason again, or /cancel)")
            return
        self.dialog = None

    def run(self, lines: Iterable[str], *, interactive: bool) -> None:
        self.echo = not interactive
        self.settle()  # what was queued before the shell started
        iterator = iter(lines)
        while True:
            if interactive:
                print(self.prompt(), end="", file=self.console.out, flush=True)
            try:
                line = next(iterator)
            except StopIteration:
                break
            if not self.feed(line):
                break


def _first_owner(runtime: Runtime) -> str | None:
    for team in runtime.config.teams.values():
        if team.owners:
            return team.owners[0]
    return None


def main(args: argparse.Namespace, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbenv shell", description=HELP)
    parser.parse_args(rest)
    from bot.bootstrap import build_runtime
    from bot.terminal import person

    chosen = person(args)  # a malformed --as stops here, before the database is opened
    runtime = build_runtime(args.config, run_by_operator=True)  # the console is the operator's
    user = chosen or _first_owner(runtime)
    if user is None:  # pragma: no cover - config requires an owner per team
        print("nbenv shell: say who you are with --as USER", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty()
    shell = Shell(runtime, sys.stdout, user)
    if interactive:
        shell.console.say(f"nbenv shell — you are {user}. Type /help for help, /quit to leave.")
    shell.run(sys.stdin, interactive=interactive)
    return 0
