"""`nbenv` — the command line: the same commands as `/nbenv` in Slack, plus the programs.

nbenv [--as USER] TEXT…           what would follow /nbenv, as Slack user USER
nbenv serve | socket | shell | demo
nbenv publish IMAGE SHA [--report FILE]
nbenv audit verify | export [--format csv|jsonl] [--output FILE]
nbenv test-notebooks DIR [--report FILE] [--jobs N] [--timeout S]
nbenv db upgrade | current
nbenv recover | worker
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.domain.errors import NbenvError

PROGRAMS = {
    "serve",
    "socket",
    "shell",
    "demo",
    "publish",
    "audit",
    "test-notebooks",
    "db",
    "recover",
    "worker",
}


def plain(text: str) -> str:
    """Slack mrkdwn → terminal text."""
    from bot.domain.text import to_plain

    return to_plain(text)


def _fail(message: str, code: int) -> int:
    print(f"nbenv: {plain(message)}", file=sys.stderr)
    return code


def _runtime(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from bot.bootstrap import build_runtime

    return build_runtime(args.config)


def _slash(args: argparse.Namespace, words: list[str]) -> int:
    from bot.domain.commands import parse

    user = args.as_user or os.environ.get("NBENV_USER")
    if not user:
        return _fail("say who you are: --as USER (a Slack user ID) or NBENV_USER", 2)
    command = parse(" ".join(_quote(w) for w in words))
    runtime = _runtime(args)
    reply = runtime.app.execute(user, command)
    if command.json:
        print(json.dumps(reply.data, indent=2, default=str))
    else:
        print(plain(reply.text))
    # The CLI has no worker of its own running: slow work it queued runs here, to the end.
    runtime.worker.run_until_idle()
    job_key = (reply.data or {}).get("job") if isinstance(reply.data, dict) else None
    if job_key:
        return _job_outcome(runtime, job_key, reply.data)
    return 0


def _job_outcome(runtime, job_key: str, data: dict[str, Any]) -> int:  # type: ignore[no-untyped-def]
    with runtime.store.read() as tx:
        job = tx.job(job_key)
        instance = tx.instance(data["name"]) if "name" in data else None
        status = runtime.app.image_status(tx, data["image"])
    if job is None or job["status"] != "done":
        reason = (job or {}).get("error") or "did not finish"
        return _fail(f"{(job or {}).get('kind', 'job')} failed: {reason}", 1)
    if instance is not None:
        print(f"instance {instance['name']} is {instance['state']}: {instance['url']}")
        note = (instance["details"] or {}).get("note")
        if note:
            print(note)
    else:
        staging = status["environments"]["staging"]
        print(
            f"build finished; staging of {data['image']} is {staging['short'] if staging else '—'}"
        )
    return 0


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word) if word != shlex.quote(word) else word


def _publish(args: argparse.Namespace, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbenv publish")
    parser.add_argument("image")
    parser.add_argument("sha")
    parser.add_argument("--report", type=Path, help="test report JSON of the notebook runner")
    parser.add_argument("--subject", help="commit subject")
    parser.add_argument("--branch")
    options = parser.parse_args(rest)
    user = args.as_user or os.environ.get("NBENV_USER")
    if not user:
        return _fail("say who you are: --as USER (a Slack user ID) or NBENV_USER", 2)
    report = None
    if options.report:
        try:
            report = json.loads(options.report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return _fail(f"cannot read the report {options.report}: {error}", 2)
    runtime = _runtime(args)
    reply = runtime.app.publish(
        user,
        options.image,
        options.sha,
        report=report,
        subject=options.subject,
        branch=options.branch,
    )
    print(plain(reply.text))
    return 0


def _audit(args: argparse.Namespace, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbenv audit")
    parser.add_argument("what", choices=["verify", "export"])
    parser.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")
    options = parser.parse_args(rest)
    runtime = _runtime(args)
    if options.what == "verify":
        check = runtime.app.verify_audit()
        print(check.describe())
        return 0 if check.ok else 1
    from bot.service.audit_export import export

    with runtime.store.read() as tx:
        entries = tx.audit_entries()
    if options.output:
        with options.output.open("w", encoding="utf-8", newline="") as out:
            export(entries, options.format, out)
    else:
        export(entries, options.format, sys.stdout)
    return 0


def _db(args: argparse.Namespace, rest: list[str]) -> int:
    from bot.store.database import current_revision, make_engine, upgrade

    parser = argparse.ArgumentParser(prog="nbenv db")
    parser.add_argument("what", choices=["upgrade", "current"])
    options = parser.parse_args(rest)
    engine = make_engine()
    if options.what == "upgrade":
        upgrade(engine)
    print(current_revision(engine) or "(empty database)")
    return 0


def _recover(args: argparse.Namespace, rest: list[str]) -> int:
    runtime = _runtime(args)
    finished = runtime.app.recover() if runtime.app.backend else []
    print(f"finished {len(finished)} interrupted operation(s)")
    with runtime.store.read() as tx:
        left = [tx.operation(operation_id) for operation_id in tx.pending_operations()]
    if left:
        reason = (left[0] or {}).get("error") or "not finished"
        return _fail(f"{len(left)} operation(s) still not in line with the registry: {reason}", 1)
    return 0


def _worker(args: argparse.Namespace, rest: list[str]) -> int:
    import time

    runtime = _runtime(args)
    while True:
        if not runtime.worker.run_once():
            time.sleep(0.5)


def _test_notebooks(args: argparse.Namespace, rest: list[str]) -> int:
    from bot.runner.notebook_tests import main as run_tests

    return run_tests(rest, prog="nbenv test-notebooks")


def _lazy(module: str, function: str = "main") -> Callable[[argparse.Namespace, list[str]], int]:
    def run(args: argparse.Namespace, rest: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args, rest)

    return run


HANDLERS: dict[str, Callable[[argparse.Namespace, list[str]], int]] = {
    "publish": _publish,
    "audit": _audit,
    "db": _db,
    "recover": _recover,
    "worker": _worker,
    "test-notebooks": _test_notebooks,
    "serve": _lazy("bot.slack.serve"),
    "socket": _lazy("bot.slack.socket"),
    "shell": _lazy("bot.slack.shell"),
    "demo": _lazy("bot.demo"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nbenv",
        description="Run what would follow /nbenv in Slack, or one of the nbenv programs.",
        usage="nbenv [--as USER] [--config FILE] TEXT… | " + " | ".join(sorted(PROGRAMS)),
    )
    parser.add_argument("--as", dest="as_user", help="act as this Slack user ID")
    parser.add_argument("--config", help="config file (default $NBENV_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("words", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    words: list[str] = args.words
    try:
        if words and words[0] in PROGRAMS:
            return HANDLERS[words[0]](args, words[1:])
        return _slash(args, words)
    except NbenvError as error:
        return _fail(error.message, error.exit_code)
    except KeyboardInterrupt:
        return 130
