"""`nbenv demo`: the whole lifecycle on the local backend, printed as a transcript.

In a temporary folder: a git repository holding notebooks/nlp.keras-batch (Dockerfile,
requirements, two test notebooks) with `main` and `staging` branches, a config, an
SQLite store. Then, through the console adapter (`nbenv shell`), exactly as people
would type it in Slack: a first version goes to production; a change breaks a test
notebook and its build names the notebook, cell and line; the fix is built, approved
and promoted; production turns out broken, a user starts an instance from fallback,
an owner rolls back; the history is shown and the audit chain verified.

Builds run the notebooks with this Python (no Docker), instances are local Jupyter
servers; nothing needs a network or an account. Takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

IMAGE = "nlp.keras-batch"
FOLDER = f"notebooks/{IMAGE}"
CHANNEL = "C01NLP"
OWNER = "U01OWNER"
TESTER = "U02TESTER"
USER = "U06USER"
INSTANCE = "ana-fallback"

CONFIG = f"""\
backend: local
teams:
  nlp:
    owners: [{OWNER}]
    testers: [{TESTER}]
    users: [{USER}]
images:
  {IMAGE}:
    team: nlp
    channel: {CHANNEL}
    source: {{repo: repo, staging_branch: staging, production_branch: main}}
"""

DOCKERFILE = """\
FROM us-docker.pkg.dev/deeplearning-platform-release/gcr.io/tf2-cpu.2-14.py310
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
"""
REQUIREMENTS = "nltk==3.8.1\nregex>=2023.1\n"
REQUIREMENTS_UPGRADED = "nltk==3.9.1\nregex>=2023.1\nrich==13.7.1\n"


def _notebook(*cells: str) -> str:
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        cells=[
            v4.new_markdown_cell(cell[3:]) if cell.startswith("md:") else v4.new_code_cell(cell)
            for cell in cells
        ],
    )
    return nbformat.writes(nb)


PYTHON_OK = _notebook("md:# The interpreter", "import sys\nassert sys.version_info >= (3, 10)")
TEXT_OK = _notebook(
    "md:# Tokenizing",
    "words = 'the quick brown fox'.split()",
    "count = len(words)\nassert count == 4, count",
)
# The 3rd cell's 2nd line fails: what the build thread must point at.
TEXT_BROKEN = _notebook(
    "md:# Tokenizing",
    "words = 'the quick brown fox'.split(' ', 2)",
    "count = len(words)\nassert count == 4, f'expected 4 tokens, got {count}'",
)


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Ana Data",
            "GIT_AUTHOR_EMAIL": "ana@example.com",
            "GIT_COMMITTER_NAME": "Ana Data",
            "GIT_COMMITTER_EMAIL": "ana@example.com",
        }
        done = subprocess.run(
            ["git", "-c", "commit.gpgsign=false", *args],
            cwd=self.path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def commit(self, message: str, files: dict[str, str]) -> str:
        for name, text in files.items():
            target = self.path / FOLDER / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            self.git("add", str(target))
        self.git("commit", "--quiet", "-m", message)
        return self.git("rev-parse", "HEAD")


def make_repo(path: Path) -> Repo:
    path.mkdir(parents=True)
    repo = Repo(path)
    repo.git("init", "--quiet", "--initial-branch=main")
    repo.commit(
        f"Add the {IMAGE} image",
        {
            "Dockerfile": DOCKERFILE,
            "requirements.txt": REQUIREMENTS,
            "tests/01_python.ipynb": PYTHON_OK,
            "tests/02_text.ipynb": TEXT_OK,
        },
    )
    repo.git("branch", "staging")
    repo.git("checkout", "--quiet", "staging")
    return repo


class Transcript:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.stage = 0

    def section(self, title: str, story: str) -> None:
        self.stage += 1
        print(f"\n══ {self.stage}. {title} ══", file=self.out)
        print(textwrap.fill(story, 88), file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"   ({text})", file=self.out, flush=True)


@contextmanager
def _environment(home: Path) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(
        {
            "NBENV_HOME": str(home / "home"),
            "NBENV_DATABASE_URL": f"sqlite:///{home / 'nbenv.db'}",
            "NBENV_CONFIG": str(home / "nbenv.yaml"),
            # The demo runs the notebooks with this Python even where Docker is installed:
            # building a Deep Learning Containers image would download gigabytes.
            "DOCKER_HOST": f"unix://{home / 'no-docker.sock'}",
        }
    )
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_demo(home: Path, out: TextIO) -> int:
    from bot.bootstrap import build_runtime
    from bot.slack.shell import Shell

    story = Transcript(out)
    repo = make_repo(home / "repo")
    (home / "nbenv.yaml").write_text(CONFIG, encoding="utf-8")
    runtime = build_runtime(str(home / "nbenv.yaml"), run_by_operator=True)
    shell = Shell(runtime, out, OWNER)
    shell.echo = True

    def type_(*lines: str) -> None:
        for line in lines:
            shell.feed(line)

    story.section(
        "The first version",
        f"{OWNER} (owner) builds the staging branch: the test notebooks run, the thread "
        f"of the commit follows the build, and on success the version lands in staging. "
        f"{TESTER} (tester) approves it, {OWNER} promotes it to production.",
    )
    type_(f"/nbenv build {IMAGE}", f"/as {TESTER}", "Approve", f"/as {OWNER}")
    type_(f"/nbenv promote {IMAGE}", "Promote to production")

    story.section(
        "A change breaks a test notebook",
        "Ana pushes a tokenizer change to staging. The build fails; the thread names the "
        "notebook, the cell and the line; staging keeps the version that works.",
    )
    repo.commit("Split on the first two spaces only", {"tests/02_text.ipynb": TEXT_BROKEN})
    type_(f"/nbenv build {IMAGE}", f"/nbenv status {IMAGE}")

    story.section(
        "The fix",
        "Ana fixes the notebook and upgrades nltk in the same push. The build passes and "
        "the new version is in staging, waiting for a tester.",
    )
    repo.commit(
        "Fix the tokenizer test; nltk 3.9.1, add rich",
        {"tests/02_text.ipynb": TEXT_OK, "requirements.txt": REQUIREMENTS_UPGRADED},
    )
    type_(f"/nbenv build {IMAGE}")

    story.section(
        "Approval and promotion",
        f"{TESTER} approves from the thread. {OWNER} presses Promote: the confirmation "
        "shows production and fallback before and after, the package changes and the "
        "approvals; confirming moves production, and the old production becomes fallback.",
    )
    type_(f"/as {TESTER}", "Approve", f"/as {OWNER}", "Promote", "Promote to production")

    story.section(
        "Production is broken: a user's way out",
        f"{USER} finds the new production crashing on long inputs. Without waiting for "
        "anyone, they start a notebook instance from fallback, pinned to its SHA.",
    )
    type_(f"/as {USER}", f"/nbenv instance {IMAGE} --env fallback --name {INSTANCE}")

    story.section(
        "Roll back",
        f"{OWNER} rolls production back to fallback. The broken version is revoked: it "
        "cannot be promoted again without fresh approvals.",
    )
    type_(
        f"/as {OWNER}",
        f"/nbenv rollback {IMAGE} --reason 'tokenizer crashes on long inputs'",
        "Roll back production",
        f"/nbenv status {IMAGE}",
    )

    story.section(
        "History and audit",
        "Every action is recorded against the commit it concerns, in a hash-chained audit "
        "log that detects an edited or deleted entry.",
    )
    type_(f"/nbenv versions {IMAGE}", f"/nbenv history {IMAGE}")
    check = runtime.nbenv.verify_audit()
    print(f"$ nbenv audit verify\n{check.describe()}", file=out)
    type_(f"/as {USER}", f"/nbenv instances {IMAGE} --stop {INSTANCE}")
    story.note(f"the demo stopped {INSTANCE}; its files were in {home}")
    print("\nThe demo ran to the end.", file=out, flush=True)
    return 0 if check.ok else 1


def main(args: argparse.Namespace, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbenv demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--keep", metavar="DIR", type=Path, help="work in DIR and keep it (default: a temp dir)"
    )
    options = parser.parse_args(rest)
    if shutil.which("git") is None:
        print("nbenv demo: needs the git program on PATH", file=sys.stderr)
        return 2
    if options.keep:
        options.keep.mkdir(parents=True, exist_ok=True)
        if any(options.keep.iterdir()):
            print(f"nbenv demo: {options.keep} is not empty", file=sys.stderr)
            return 2
        with _environment(options.keep):
            return run_demo(options.keep, sys.stdout)
    with tempfile.TemporaryDirectory(prefix="nbenv-demo-") as tmp, _environment(Path(tmp)):
        return run_demo(Path(tmp), sys.stdout)
