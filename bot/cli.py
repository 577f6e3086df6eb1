"""`nbenv` — the command line: the same commands as `/nbenv` in Slack, plus the programs.

nbenv [--as USER] TEXT…           what would follow /nbenv, as Slack user USER
nbenv serve | socket | shell | demo
nbenv publish IMAGE SHA [--report FILE] [--build-id ID]
nbenv audit verify | export [--format csv|jsonl] [--output FILE]
nbenv test-notebooks DIR [--report FILE] [--jobs N] [--timeout S]
nbenv db upgrade | current
nbenv recover | worker
nbenv help [COMMAND] | --help | COMMAND --help | --version   (no identity needed, run nothing)

What a command prints is its answer and nothing else: log records go to
$NBENV_HOME/nbenv.log (with -v to stderr as well). The programs that run as services
or in a pipeline (serve, socket, worker, test-notebooks) log to stderr, which is where
Cloud Run and Cloud Build collect it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any, TextIO

from bot.domain.errors import NbenvError
from bot.domain.names import Pipeline
from bot.terminal import person

LOG_FILE = "nbenv.log"
LOG_FILE_BYTES = 1_000_000  # then it rolls over once: at most two such files
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What each slash command does, for `nbenv --help` and `nbenv COMMAND --help`.
HELP_FLAGS = frozenset({"-h", "--help"})


def plain(text: str) -> str:
    """Slack mrkdwn → terminal text."""
    from bot.domain.text import to_plain

    return to_plain(text)


def _fail(message: str, code: int) -> int:
    print(f"nbenv: {plain(message)}", file=sys.stderr)
    return code


def _runtime(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from bot.bootstrap import build_runtime

    # The person at this terminal runs nbenv: an instance that shares its OS user is theirs.
    return build_runtime(args.config, run_by_operator=True)


def _slash(args: argparse.Namespace, words: list[str]) -> int:
    from bot.domain.command_table import parse_words

    user = person(args)
    if not user:
        return _fail("say who you are: --as USER (a Slack user ID) or NBENV_USER", 2)
    command = parse_words(words)  # the shell has cut them already: no joining to cut again
    runtime = _runtime(args)
    reply = runtime.nbenv.execute(user, command)
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
        job = tx.jobs.get(job_key)
        instance = tx.instances.get(data["name"]) if "name" in data else None
        status = runtime.nbenv.image_status(tx, data["image"])
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


def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image")
    parser.add_argument("sha")
    parser.add_argument("--report", type=Path, help="test report JSON of the notebook runner")
    parser.add_argument("--subject", help="commit subject")
    parser.add_argument("--branch")
    parser.add_argument(
        "--build-id", help="publish as the pipeline, for this build (instead of --as USER)"
    )


def _publish(options: argparse.Namespace) -> int:
    if options.build_id and options.as_user:
        return _fail("publish as --as USER or as the pipeline with --build-id, not both", 2)
    user = Pipeline(options.build_id) if options.build_id else person(options)
    if not user:
        return _fail("say who you are: --as USER (a Slack user ID) or NBENV_USER", 2)
    report = None
    if options.report:
        from bot.builds.report import check_report

        try:
            report = json.loads(options.report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return _fail(f"cannot read the report {options.report}: {error}", 2)
        except RecursionError:
            return _fail(f"cannot read the report {options.report}: nested too deeply", 2)
        # The shape the relay checks too: a report that is not one is refused in one line.
        report = check_report(report)
    runtime = _runtime(options)
    reply = runtime.nbenv.publish(
        user,
        options.image,
        options.sha,
        report=report,
        subject=options.subject,
        branch=options.branch,
        build_id=options.build_id,
    )
    print(plain(reply.text))
    return 0


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["verify", "export"])
    parser.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")


def _audit(options: argparse.Namespace) -> int:
    runtime = _runtime(options)
    if options.what == "verify":
        check = runtime.nbenv.verify_audit()
        print(check.describe())
        return 0 if check.ok else 1
    from bot.service.audit_export import export

    with runtime.store.read() as tx:
        entries = tx.audit.entries()
    if options.output:
        with options.output.open("w", encoding="utf-8", newline="") as out:
            export(entries, options.format, out)
    else:
        export(entries, options.format, sys.stdout)
    return 0


def _db_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["upgrade", "current"])


def _db(options: argparse.Namespace) -> int:
    from bot.store.database import current_revision, make_engine, upgrade

    engine = make_engine()
    if options.what == "upgrade":
        upgrade(engine)
    print(current_revision(engine) or "(empty database)")
    return 0


def _recover(options: argparse.Namespace) -> int:
    runtime = _runtime(options)
    finished = runtime.nbenv.recover() if runtime.nbenv.backend else []
    print(f"finished {len(finished)} interrupted operation(s)")
    with runtime.store.read() as tx:
        left = [tx.sagas.get(operation_id) for operation_id in tx.sagas.pending()]
    if left:
        reason = (left[0] or {}).get("error") or "not finished"
        return _fail(f"{len(left)} operation(s) still not in line with the registry: {reason}", 1)
    return 0


def _worker(options: argparse.Namespace) -> int:
    import time

    runtime = _runtime(options)
    while True:
        if not runtime.worker.run_once():
            time.sleep(0.5)


def _test_notebooks(args: argparse.Namespace, rest: list[str]) -> int:
    from bot.runner.notebook_tests import main as run_tests

    return run_tests(rest, prog="nbenv test-notebooks")


def _elsewhere(module: str) -> Callable[[argparse.Namespace, list[str]], int]:
    """The `main(args, rest)` of MODULE, imported when the program runs (not for `status`)."""

    def run(args: argparse.Namespace, rest: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(args, rest)  # type: ignore[no-any-return]

    return run


@dataclass(frozen=True)
class Program:
    """A program beside the slash commands. Either it declares its ARGUMENTS (a subparser
    of `nbenv`) and RUN gets them parsed, or it parses its own: MAIN gets the words after
    its name (its parser lives in a module loaded only when it runs)."""

    summary: str  # what `nbenv --help` says of it
    run: Callable[[argparse.Namespace], int] | None = None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    main: Callable[[argparse.Namespace, list[str]], int] | None = None
    # Its stderr is its log: Cloud Run, Cloud Build or the operator's terminal keep it.
    logs_to_stderr: bool = False


PROGRAMS = {
    "serve": Program(
        "the bot over HTTP, for Slack (Cloud Run)",
        main=_elsewhere("bot.slack.serve"),
        logs_to_stderr=True,
    ),
    "socket": Program(
        "the bot over Slack's Socket Mode (from a laptop, no public URL)",
        main=_elsewhere("bot.slack.socket"),
        logs_to_stderr=True,
    ),
    "shell": Program(
        "the bot on the console: type /nbenv lines, press buttons by label",
        main=_elsewhere("bot.slack.shell"),
    ),
    "demo": Program(
        "the whole lifecycle on the local backend, printed as a transcript",
        main=_elsewhere("bot.demo"),
    ),
    "publish": Program(
        "record a tested version and point staging at it (owners, the pipeline)",
        run=_publish,
        arguments=_publish_arguments,
    ),
    "audit": Program(
        "verify the audit log's hash chain, or export it (CSV, JSON lines)",
        run=_audit,
        arguments=_audit_arguments,
    ),
    "test-notebooks": Program(
        "run an image's test notebooks and write the test report",
        main=_test_notebooks,
        logs_to_stderr=True,
    ),
    "db": Program(
        "upgrade the database schema, or show its revision", run=_db, arguments=_db_arguments
    ),
    "recover": Program("finish promotions and rollbacks a crash left half done", run=_recover),
    "worker": Program(
        "run the job queue (builds, instances, plans) until stopped",
        run=_worker,
        logs_to_stderr=True,
    ),
}


def _programs_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """A subparser for each program that declares its arguments, by program name."""
    parser = argparse.ArgumentParser(prog="nbenv", add_help=False)
    subparsers = parser.add_subparsers(dest="program", required=True, prog="nbenv")
    declared = {}
    for name, program in PROGRAMS.items():
        if program.run is not None:
            declared[name] = subparsers.add_parser(name, description=program.summary)
            if program.arguments is not None:
                program.arguments(declared[name])
    return parser, declared


def _run_program(args: argparse.Namespace, name: str, rest: list[str]) -> int:
    """Program NAME with the words after it (REST), as `nbenv [OPTIONS] NAME REST…`."""
    program = PROGRAMS[name]
    if program.main is not None:
        return program.main(args, rest)
    parser, declared = _programs_parser()
    options, unknown = parser.parse_known_args([name, *rest], namespace=args)
    if unknown:  # as the program's own parser says it (usage, then the error), exit 2
        declared[name].error(f"unrecognized arguments: {' '.join(unknown)}")
    assert program.run is not None
    return program.run(options)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nbenv")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _listing(rows: dict[str, str], column: int = 24) -> list[str]:
    """Name and summary side by side, as argparse lays out options; a long name gets
    its summary on the next line."""
    lines = []
    for name, summary in rows.items():
        if len(name) < column - 2:
            lines.append(f"  {name.ljust(column - 2)}{summary}")
        else:
            lines += [f"  {name}", f"{' ' * column}{summary}"]
    return lines


def _overview() -> str:
    from bot.domain.command_table import COMMANDS

    slash = {
        "help [COMMAND]" if name == "help" else spec.usage: spec.summary
        for name, spec in COMMANDS.items()
    }
    return "\n".join(
        [
            "commands — what follows /nbenv in Slack, as --as USER (default $NBENV_USER):",
            *_listing(slash),
            "",
            "programs:",
            *_listing({name: program.summary for name, program in PROGRAMS.items()}),
            "",
            "`nbenv COMMAND --help` (or `nbenv help COMMAND`) describes one of them;",
            "asking for help runs nothing and needs no identity.",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbenv",
        usage="nbenv [--as USER] [--config FILE] [-v] COMMAND [ARGUMENTS…]",
        description="Run what would follow /nbenv in Slack, or one of the nbenv programs.",
        epilog=_overview(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nbenv {_version()}")
    parser.add_argument(
        "--as", dest="as_user", metavar="USER", help="act as this Slack user ID ($NBENV_USER)"
    )
    parser.add_argument("--config", metavar="FILE", help="config file (default $NBENV_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the log on stderr too")
    parser.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _help_wanted(words: list[str]) -> bool:
    """`nbenv`, `nbenv help [COMMAND]` or `nbenv COMMAND … --help`."""
    return not words or words[0].lower() == "help" or not HELP_FLAGS.isdisjoint(words)


def _help(args: argparse.Namespace, words: list[str]) -> int:
    """Usage only: nothing is run, read or written, and no identity is needed."""
    from bot.domain.command_table import COMMANDS

    if words and words[0].lower() == "help":
        words = words[1:]
    topic = words[0] if words else "help"
    if topic in HELP_FLAGS or topic.lower() == "help":
        _parser().print_help()
        return 0
    if topic in PROGRAMS:
        try:  # each program's own parser prints its usage and exits
            return _run_program(args, topic, ["--help"])
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else 0
    name = topic.lower()
    if name not in COMMANDS:
        return _fail(f"unknown command {topic!r}: `nbenv --help` lists them", 2)
    print(f"usage: nbenv [--as USER] {COMMANDS[name].usage}")
    print()
    print(COMMANDS[name].summary)
    print()
    print(f"The same as `/nbenv {name} …` in Slack, as Slack user USER (default $NBENV_USER).")
    return 0


class _OutputThatOutlivesItsReader:
    """stdout or stderr for a command whose reader may leave early (`nbenv history | head -1`).

    Once the reader has gone, the rest of the output is dropped: the command still does
    all it was asked (a build it started runs to its end) and exits with its own status,
    with no BrokenPipeError traceback and no "Exception ignored" at exit.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop_from_now_on()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop_from_now_on()

    def _drop_from_now_on(self) -> None:
        # The descriptor now leads nowhere: what is still buffered, and all later output,
        # is written to /dev/null (the recipe of Python's signal module documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def _output_that_outlives_its_reader() -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    sys.stdout = _OutputThatOutlivesItsReader(sys.stdout)  # type: ignore[assignment]
    sys.stderr = _OutputThatOutlivesItsReader(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved


class _LogFileInHome(logging.Handler):
    """Appends to $NBENV_HOME/nbenv.log, made at the first record: a command that logs
    nothing (`--help`) leaves nothing behind. $NBENV_HOME is read then, so the demo's
    log stays in the demo's folder."""

    def __init__(self) -> None:
        super().__init__()
        self._file: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            self._file = self._open()
            self._file.setFormatter(self.formatter)
        self._file.emit(record)

    @staticmethod
    def _open() -> logging.Handler:
        from bot.config_file import nbenv_home

        home = nbenv_home()
        try:
            home.mkdir(parents=True, exist_ok=True)
            return RotatingFileHandler(
                home / LOG_FILE, maxBytes=LOG_FILE_BYTES, backupCount=1, encoding="utf-8"
            )
        except OSError:  # a home nbenv may not write to: better on stderr than lost
            return logging.StreamHandler(sys.stderr)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _configure_logging(program: Program | None, verbose: bool) -> None:
    to_stderr = program is not None and program.logs_to_stderr
    handlers: list[logging.Handler] = []
    if to_stderr or verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    if not to_stderr:
        handlers.append(_LogFileInHome())
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
        handlers=handlers,
    )


def main(argv: list[str] | None = None) -> int:
    with _output_that_outlives_its_reader():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    words: list[str] = args.words
    if _help_wanted(words):
        return _help(args, words)
    program = PROGRAMS.get(words[0])
    _configure_logging(program, args.verbose)
    try:
        if program is not None:
            return _run_program(args, words[0], words[1:])
        return _slash(args, words)
    except NbenvError as error:
        return _fail(error.message, error.exit_code)
    except KeyboardInterrupt:
        return 130
