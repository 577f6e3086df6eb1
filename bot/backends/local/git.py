"""Read-only access to an image's git repository, through the `git` program.

Only committed content is ever read (`git archive`, `git show`), so a dirty work tree
or another branch being checked out in the repository changes nothing we build.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Mapping
from pathlib import Path

from bot.config import Config
from bot.config_file import nbenv_home
from bot.domain.diff import is_dependency_file
from bot.domain.errors import BadInput, NbenvError
from bot.domain.names import short

GIT_TIMEOUT_S = 120


class GitFailed(NbenvError):
    """git itself failed (a corrupt repository, a missing object)."""


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # Never wait for credentials, and keep messages in one language we can show.
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANGUAGE": "C"})
    return env


class GitRepo:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        if not self.path.exists():
            raise BadInput(f"git repository {self.path} not found")
        result = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            env=_environment(),
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
        if check and result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise GitFailed(
                f"git {args[0]} failed in {self.path}: {message[-1] if message else 'no output'}"
            )
        return result

    def _text(self, *args: str) -> str:
        return self._run(*args).stdout.decode(errors="replace").strip()

    def check(self) -> None:
        result = self._run("rev-parse", "--git-dir", check=False)
        if result.returncode != 0:
            raise BadInput(f"{self.path} is not a git repository")

    def resolve(self, ref: str) -> str:
        """The full SHA of the commit REF names (branch, tag, full or short SHA)."""
        if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
            raise BadInput(f"{ref!r} is not a branch, tag or commit")
        self.check()
        result = self._run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if result.returncode != 0:
            raise BadInput(f"no branch, tag or commit {ref!r} in {self.path}")
        return result.stdout.decode().strip()

    def is_branch(self, ref: str) -> bool:
        return (
            self._run(
                "show-ref", "--verify", "--quiet", f"refs/heads/{ref}", check=False
            ).returncode
            == 0
        )

    def is_tag(self, ref: str) -> bool:
        return (
            self._run("show-ref", "--verify", "--quiet", f"refs/tags/{ref}", check=False).returncode
            == 0
        )

    def contains(self, branch: str, sha: str) -> bool:
        """True when SHA is reachable from BRANCH."""
        if not self.is_branch(branch):
            return False
        result = self._run("merge-base", "--is-ancestor", sha, f"refs/heads/{branch}", check=False)
        return result.returncode == 0

    def fetch(self) -> None:
        self._run("fetch", "--prune", "--quiet", "origin")

    def subject(self, sha: str) -> str:
        return self._text("log", "-1", "--format=%s", sha)

    def has_commit(self, sha: str) -> bool:
        return self._run("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0

    def has_folder(self, sha: str, folder: str) -> bool:
        result = self._run("cat-file", "-t", f"{sha}:{folder}", check=False)
        return result.returncode == 0 and result.stdout.strip() == b"tree"

    def files(self, sha: str, folder: str) -> list[str]:
        """Paths of the files under FOLDER at SHA, relative to FOLDER."""
        listing = self._text("ls-tree", "-r", "--name-only", "-z", f"{sha}:{folder}")
        return [path for path in listing.split("\0") if path]

    def read(self, sha: str, path: str) -> str:
        return self._run("show", f"{sha}:{path}").stdout.decode(errors="replace")

    def export(self, sha: str, folder: str, destination: Path) -> None:
        """Write FOLDER as committed at SHA into DESTINATION (its contents, not the folder)."""
        if not self.has_folder(sha, folder):
            raise BadInput(f"no folder {folder} in commit {short(sha)} of {self.path}")
        archive = self._run("archive", "--format=tar", f"{sha}:{folder}").stdout
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # "data" refuses absolute paths, links out of the tree and device files.
            tar.extractall(destination, filter="data")


def is_url(repo: str) -> bool:
    """A remote repository (https://, ssh://, file://, or scp-like git@host:path)."""
    return "://" in repo or bool(re.match(r"^[\w.-]+@[\w.-]+:", repo))


class Repositories:
    """The git repository of each image: the configured folder, or for a URL, a mirror
    kept in $NBENV_HOME/repos/ and fetched before each build."""

    def __init__(self, config: Config, home: Path) -> None:
        self.config = config
        self.home = home
        self._lock = threading.Lock()

    def of(self, image: str, *, refresh: bool = False) -> GitRepo:
        source = self.config.images[image].source.repo
        if not is_url(source):
            return GitRepo(self.config.repo_path(image))
        name = hashlib.sha256(source.encode()).hexdigest()[:16]
        mirror = self.home / "repos" / f"{name}.git"
        with self._lock:
            if not mirror.exists():
                self._clone(source, mirror)
            elif refresh:
                GitRepo(mirror).fetch()
        return GitRepo(mirror)

    def _clone(self, source: str, mirror: Path) -> None:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        # Clone beside it and rename: another process never sees a half-made mirror.
        partial = mirror.with_name(f"{mirror.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run(
            ["git", "clone", "--mirror", "--quiet", "--", source, str(partial)],
            capture_output=True,
            env=_environment(),
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise GitFailed(f"cannot clone {source}: {message[-1] if message else 'no output'}")
        try:
            partial.rename(mirror)
        except OSError:  # another process made it first
            shutil.rmtree(partial, ignore_errors=True)


class GitSource:
    """The differ's `SourceFiles` port: dependency files of an image folder at a SHA."""

    def __init__(self, config: Config, home: Path | None = None) -> None:
        self.config = config
        self.repositories = Repositories(config, home or nbenv_home())

    def image_files(self, image: str, sha: str) -> Mapping[str, str]:
        repo = self.repositories.of(image)
        folder = self.config.image_folder(image)
        repo.check()
        if not repo.has_commit(sha):
            # A mirror may predate the commit: fetch once before saying it is not there.
            repo = self.repositories.of(image, refresh=True)
        if not repo.has_commit(sha):
            raise BadInput(f"commit {short(sha)} is not in {repo.path}")
        if not repo.has_folder(sha, folder):
            raise BadInput(f"no folder {folder} in commit {short(sha)}")
        return {
            path: repo.read(sha, f"{folder}/{path}")
            for path in repo.files(sha, folder)
            if is_dependency_file(path)
        }
