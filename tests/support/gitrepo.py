"""Real git repositories for tests: an image folder with a history worth building.

`image_repo(root)` makes the standard one (see its docstring); `ScratchRepo` makes any
other. Commits go through the `git` program with a fixed identity and no user or system
config, so they behave the same on every machine.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import v4

IMAGE = "nlp.keras-batch"
STAGING = "staging"
PRODUCTION = "main"

BASE_OLD = "us-docker.pkg.dev/deeplearning-platform-release/gcr.io/tf2-cpu.2-14.py310"
BASE_NEW = "us-docker.pkg.dev/deeplearning-platform-release/gcr.io/tf2-cpu.2-15.py310"

# Where the "break" commit makes tests/02_text.ipynb fail: its 3rd cell (In [2] in
# Jupyter, after a markdown cell), 2nd line.
BROKEN_NOTEBOOK = "tests/02_text.ipynb"
BROKEN_CELL = 3
BROKEN_IN = 2
BROKEN_LINE = 2
BROKEN_WHERE = f"cell {BROKEN_CELL} (In [{BROKEN_IN}]), line {BROKEN_LINE}"


def notebook(*cells: str) -> str:
    """A notebook's JSON; a cell starting with ``md:`` is markdown, any other is code."""
    nb = v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        cells=[
            v4.new_markdown_cell(cell[3:]) if cell.startswith("md:") else v4.new_code_cell(cell)
            for cell in cells
        ],
    )
    return nbformat.writes(nb)


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Test Author",
            "GIT_AUTHOR_EMAIL": "author@example.com",
            "GIT_COMMITTER_NAME": "Test Author",
            "GIT_COMMITTER_EMAIL": "author@example.com",
        }
    )
    return env


@dataclass
class ScratchRepo:
    path: Path
    commits: dict[str, str] = field(default_factory=dict)  # label → SHA

    @classmethod
    def create(cls, path: Path, branch: str = PRODUCTION) -> ScratchRepo:
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path)
        repo.git("init", "--quiet", f"--initial-branch={branch}")
        return repo

    def git(self, *args: str) -> str:
        result = subprocess.run(
            [
                "git",
                "-c",
                "user.name=Test Author",
                "-c",
                "user.email=author@example.com",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            cwd=self.path,
            env=_git_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    def commit(
        self,
        label: str,
        message: str,
        files: Mapping[str, str | None],
        *,
        branch: str | None = None,
    ) -> str:
        """Write FILES (None deletes), commit them on BRANCH (default: the current one)."""
        if branch is not None:
            self.git("checkout", "--quiet", branch)
        for name, text in files.items():
            target = self.path / name
            if text is None:
                self.git("rm", "--quiet", "-r", name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            self.git("add", name)
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        sha = self.git("rev-parse", "HEAD")
        self.commits[label] = sha
        return sha

    def branch(self, name: str, at: str = "HEAD") -> None:
        self.git("branch", "--force", name, at)

    def tip(self, branch: str) -> str:
        return self.git("rev-parse", f"refs/heads/{branch}")

    def sha(self, label: str) -> str:
        return self.commits[label]


@dataclass
class ImageRepo(ScratchRepo):
    image: str = IMAGE

    @property
    def folder(self) -> str:
        return f"notebooks/{self.image}"


def _dockerfile(base: str, extra_run: str = "") -> str:
    lines = [
        f"FROM {base}",
        "COPY requirements.txt /tmp/requirements.txt",
        "RUN pip install --no-cache-dir -r /tmp/requirements.txt \\",
        "  && rm /tmp/requirements.txt",
    ]
    if extra_run:
        lines.append(extra_run)
    return "\n".join(lines) + "\n"


NOTEBOOK_PYTHON = notebook(
    "md:# The interpreter",
    "import sys\nassert sys.version_info >= (3, 10), sys.version",
)
NOTEBOOK_TEXT_OK = notebook(
    "md:# Text handling",
    "words = 'the quick fox'.split()",
    "count = len(words)\nassert count == 3, count",
)
NOTEBOOK_TEXT_BROKEN = notebook(
    "md:# Text handling",
    "words = 'the quick fox'.split()",
    "count = len(words)\nassert count == 4, f'expected four words, got {count}'",
)


def image_repo(root: Path, image: str = IMAGE) -> ImageRepo:
    """A repository holding notebooks/IMAGE with this history (labels in brackets):

    * [initial] on `main` and `staging`: FROM tf2-cpu.2-14, nltk==3.8.1,
      sentencepiece==0.1.99, regex>=2023.1; two passing test notebooks.
    * [upgrade] on `staging`: FROM tf2-cpu.2-15; nltk==3.9.1; sentencepiece removed;
      rich==13.7.1 added; a `pip install pyyaml==6.0.1` line in the Dockerfile.
    * [break] on `staging` (its tip): tests/02_text.ipynb fails in cell 3 (In [2]), line 2
      with an AssertionError; nothing else changes.
    """
    repo = ImageRepo.create(root)
    repo.image = image
    folder = repo.folder
    repo.commit(
        "initial",
        f"Add the {image} image",
        {
            "README.md": "Managed notebook images.\n",
            f"{folder}/Dockerfile": _dockerfile(BASE_OLD),
            f"{folder}/requirements.txt": (
                "# pinned by the NLP team\nnltk==3.8.1\nsentencepiece==0.1.99\nregex>=2023.1\n"
            ),
            f"{folder}/tests/01_python.ipynb": NOTEBOOK_PYTHON,
            f"{folder}/tests/02_text.ipynb": NOTEBOOK_TEXT_OK,
        },
    )
    repo.branch(STAGING)
    repo.git("checkout", "--quiet", STAGING)
    repo.commit(
        "upgrade",
        "Move to TF 2.15 and upgrade nltk",
        {
            f"{folder}/Dockerfile": _dockerfile(
                BASE_NEW, "RUN pip install --no-cache-dir pyyaml==6.0.1"
            ),
            f"{folder}/requirements.txt": "nltk==3.9.1\nregex>=2023.1\nrich==13.7.1\n",
        },
    )
    repo.commit(
        "break",
        "Expect four words",
        {f"{folder}/tests/02_text.ipynb": NOTEBOOK_TEXT_BROKEN},
    )
    return repo
