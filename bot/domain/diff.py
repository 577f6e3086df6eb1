"""What changed between two versions of an image. Pure: text and reports in, a diff out.

Three layers, from what people wrote to what got installed:

* the base image: the Dockerfile's ``FROM``;
* declared dependencies: requirements files and ``pip``/``conda install`` lines of
  ``RUN`` instructions, as written (``nltk==3.9.1``, ``numpy>=1.26``);
* resolved packages: the package manifests the test runs recorded (DESIGN.md §5, test
  report ``packages``): what the built image really holds.

Versions are ordered with ``packaging.version`` (PEP 440); a version it cannot read
(some conda builds) is reported as ``changed`` rather than guessed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ADDED = "added"
REMOVED = "removed"
UPGRADED = "upgraded"
DOWNGRADED = "downgraded"
CHANGED = "changed"  # a spec that is not a single pin, or a version PEP 440 cannot order

# pip options that take a value (so the value is not mistaken for a package).
_PIP_VALUE_OPTIONS = frozenset(
    {
        "-r",
        "--requirement",
        "-c",
        "--constraint",
        "-e",
        "--editable",
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "-t",
        "--target",
        "--prefix",
        "--root",
        "--src",
        "--trusted-host",
        "--platform",
        "--python-version",
        "--implementation",
        "--abi",
        "--upgrade-strategy",
        "--progress-bar",
        "--cache-dir",
        "--log",
        "--proxy",
        "--retries",
        "--timeout",
        "--exists-action",
        "--cert",
        "--client-cert",
        "--global-option",
        "-C",
        "--config-settings",
        "--no-binary",
        "--only-binary",
        "--report",
        "--root-user-action",
        "--python",
    }
)
_CONDA_VALUE_OPTIONS = frozenset(
    {"-c", "--channel", "-n", "--name", "-p", "--prefix", "--file", "--repodata-fn"}
)
_CONDA_TOOLS = frozenset({"conda", "mamba", "micromamba"})
_CONDA_SPEC = re.compile(r"(?:(?P<channel>[^:\s]+)::)?(?P<name>[A-Za-z0-9_.\-]+)\s*(?P<spec>.*)")
_SHELL_SEPARATORS = re.compile(r"&&|\|\||[;|]")
_PIN = re.compile(r"^(?:==|=)\s*([^,*|<>!=~\s]+)$")
_ARG_REF = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


@dataclass(frozen=True)
class Declared:
    """One declared dependency: canonical name, version spec as written, where it is."""

    name: str
    spec: str
    source: str

    @property
    def pinned(self) -> str | None:
        """The exact version when the spec pins one (``==1.2`` or conda's ``=1.2``)."""
        match = _PIN.match(self.spec)
        return match.group(1) if match else None


@dataclass(frozen=True)
class Change:
    name: str
    kind: str  # added | removed | upgraded | downgraded | changed
    old: str | None
    new: str | None
    source: str | None = None


@dataclass(frozen=True)
class ImageDiff:
    base_old: tuple[str, ...] | None  # None: the Dockerfile is unknown at that version
    base_new: tuple[str, ...] | None
    declared: tuple[Change, ...] | None  # None: the files of one side are unknown
    packages: tuple[Change, ...] | None  # None: one side has no manifest
    python_old: str | None = None
    python_new: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def base_changed(self) -> bool:
        return (
            self.base_old is not None
            and self.base_new is not None
            and (self.base_old != self.base_new)
        )

    @property
    def python_changed(self) -> bool:
        return bool(self.python_old and self.python_new and self.python_old != self.python_new)

    @property
    def empty(self) -> bool:
        return not (self.base_changed or self.declared or self.packages or self.python_changed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_image": {
                "old": list(self.base_old) if self.base_old is not None else None,
                "new": list(self.base_new) if self.base_new is not None else None,
                "changed": self.base_changed,
            },
            "declared": (
                [asdict(change) for change in self.declared] if self.declared is not None else None
            ),
            "packages": (
                [asdict(change) for change in self.packages] if self.packages is not None else None
            ),
            "python": {"old": self.python_old, "new": self.python_new},
            "notes": list(self.notes),
        }


# -- reading the files -----------------------------------------------------------------------


def is_dependency_file(path: str) -> bool:
    """Dockerfiles and requirements files of an image folder; tests are not dependencies."""
    parts = PurePosixPath(path).parts
    if not parts or parts[0] == "tests":
        return False
    name = parts[-1].lower()
    return name.startswith("dockerfile") or (
        name.endswith(".txt") and ("requirements" in name or "constraints" in name)
    )


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comment lines dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and pending:
            continue  # a comment inside a continued instruction (Docker allows it)
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    if pending:
        lines.append(pending)
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    result = []
    for line in _logical_lines(dockerfile):
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _substitute(text: str, args: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name in args:
            return args[name]
        default = match.group(2)
        return default if default is not None else match.group(0)

    return _ARG_REF.sub(value, text)


def dockerfile_bases(dockerfile: str) -> tuple[str, ...]:
    """The external images the Dockerfile builds FROM, global ``ARG`` defaults filled in.

    Stages that start from an earlier stage (``FROM builder``) are not external images.
    """
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    seen_from = False
    for keyword, rest in _instructions(dockerfile):
        if keyword == "ARG" and not seen_from:
            name, sep, default = rest.partition("=")
            if sep:
                args[name.strip()] = default.strip().strip("\"'")
        elif keyword == "FROM":
            seen_from = True
            words = [w for w in rest.split() if not w.startswith("--")]
            if not words:
                continue
            image = _substitute(words[0], args)
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
            if image.lower() not in stages:
                bases.append(image)
    return tuple(bases)


def _operands(words: list[str], value_options: frozenset[str]) -> list[str]:
    """The words of an install command that are not options (nor an option's value)."""
    operands = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in value_options
        else:
            operands.append(word)
    return operands


def _pip_packages(words: list[str], source: str) -> list[Declared]:
    found = []
    for word in _operands(words, _PIP_VALUE_OPTIONS):
        if "/" in word or word.startswith(".") or word.endswith((".whl", ".tar.gz", ".zip")):
            continue  # a local path or URL: no name to compare by
        declared = _requirement(word, source)
        if declared is not None:
            found.append(declared)
    return found


def _conda_packages(words: list[str], source: str) -> list[Declared]:
    found = []
    for word in _operands(words, _CONDA_VALUE_OPTIONS):
        match = _CONDA_SPEC.fullmatch(word.strip())
        if match:
            found.append(
                Declared(
                    canonicalize_name(match.group("name")), match.group("spec").strip(), source
                )
            )
    return found


def _install_command(words: list[str]) -> tuple[str, list[str]] | None:
    """('pip'|'conda', arguments after `install`) for an install command, else None."""
    if not words:
        return None
    tool = PurePosixPath(words[0]).name
    rest = words[1:]
    if re.fullmatch(r"python[0-9.]*", tool) and rest[:2] == ["-m", "pip"]:
        tool, rest = "pip", rest[2:]
    if re.fullmatch(r"pip[0-9.]*", tool) and rest[:1] == ["install"]:
        return "pip", rest[1:]
    if tool in _CONDA_TOOLS and rest[:1] == ["install"]:
        return "conda", rest[1:]
    return None


def dockerfile_installs(dockerfile: str, path: str = "Dockerfile") -> list[Declared]:
    """Packages named on ``pip install`` / ``conda install`` lines of RUN instructions."""
    found: list[Declared] = []
    for keyword, rest in _instructions(dockerfile):
        if keyword != "RUN":
            continue
        for command in _SHELL_SEPARATORS.split(rest):
            try:
                words = shlex.split(command, comments=False)
            except ValueError:
                words = command.split()
            parsed = _install_command(words)
            if parsed is None:
                continue
            tool, arguments = parsed
            source = f"{path} ({tool} install)"
            if tool == "pip":
                found += _pip_packages(arguments, source)
            else:
                found += _conda_packages(arguments, source)
    return found


def _requirement(text: str, source: str) -> Declared | None:
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return None
    spec = f"@ {requirement.url}" if requirement.url else str(requirement.specifier)
    return Declared(canonicalize_name(requirement.name), spec, source)


def requirements(text: str, path: str = "requirements.txt") -> list[Declared]:
    """The requirements of a pip requirements file; options and includes are skipped."""
    found = []
    for line in _logical_lines(text):
        line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
        if not line or line.startswith("-"):
            continue
        # Per-requirement options (--hash=…) follow the requirement itself.
        line = re.split(r"\s+--?[a-zA-Z]", line, maxsplit=1)[0].strip()
        declared = _requirement(line, path)
        if declared is not None:
            found.append(declared)
    return found


def declared_dependencies(files: Mapping[str, str]) -> dict[str, Declared]:
    """Every declared dependency of an image folder (path → text), by canonical name.

    A package declared in several places keeps every distinct spec, joined with ``, ``.
    """
    merged: dict[str, Declared] = {}
    for path in sorted(files):
        if not is_dependency_file(path):
            continue
        name = PurePosixPath(path).name.lower()
        text = files[path]
        if name.startswith("dockerfile"):
            items = dockerfile_installs(text, path)
        else:
            items = requirements(text, path)
        for item in items:
            previous = merged.get(item.name)
            if previous is None:
                merged[item.name] = item
            elif item.spec and item.spec not in previous.spec.split(", "):
                spec = ", ".join(s for s in (previous.spec, item.spec) if s)
                merged[item.name] = Declared(item.name, spec, previous.source)
    return merged


def base_images(files: Mapping[str, str]) -> tuple[str, ...]:
    dockerfiles = [p for p in sorted(files) if PurePosixPath(p).name.lower() == "dockerfile"]
    if not dockerfiles:
        return ()
    return dockerfile_bases(files[dockerfiles[0]])


# -- comparing -------------------------------------------------------------------------------


def order(old: str, new: str) -> str:
    """upgraded, downgraded or changed (equal versions that are spelled differently)."""
    try:
        old_version, new_version = Version(old), Version(new)
    except InvalidVersion:
        return CHANGED
    if new_version > old_version:
        return UPGRADED
    if new_version < old_version:
        return DOWNGRADED
    return CHANGED


def compare_declared(old: Mapping[str, Declared], new: Mapping[str, Declared]) -> list[Change]:
    changes = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before is None and after is not None:
            changes.append(Change(name, ADDED, None, after.spec, after.source))
        elif after is None and before is not None:
            changes.append(Change(name, REMOVED, before.spec, None, before.source))
        elif before is not None and after is not None and before.spec != after.spec:
            kind = CHANGED
            if before.pinned and after.pinned:
                kind = order(before.pinned, after.pinned)
            changes.append(Change(name, kind, before.spec, after.spec, after.source))
    return changes


def _manifest(packages: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    result = {}
    for package in packages:
        name = package.get("name")
        version = package.get("version")
        if not name or version is None:
            continue
        source = str(package.get("source") or "pip")
        result[(source, canonicalize_name(str(name)))] = str(version)
    return result


def compare_manifests(
    old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]
) -> list[Change]:
    """Installed packages (test report ``packages``): added, removed, up- and downgraded."""
    before, after = _manifest(old), _manifest(new)
    changes = []
    for key in sorted(before.keys() | after.keys(), key=lambda k: (k[1], k[0])):
        source, name = key
        label = None if source == "pip" else source
        if key not in before:
            changes.append(Change(name, ADDED, None, after[key], label))
        elif key not in after:
            changes.append(Change(name, REMOVED, before[key], None, label))
        elif before[key] != after[key]:
            changes.append(
                Change(name, order(before[key], after[key]), before[key], after[key], label)
            )
    return changes


def diff_image(
    old_files: Mapping[str, str] | None,
    new_files: Mapping[str, str] | None,
    old_report: Mapping[str, Any] | None,
    new_report: Mapping[str, Any] | None,
    notes: Iterable[str] = (),
) -> ImageDiff:
    """Compare two versions; None for files or a report means that side is unknown."""
    declared = None
    if old_files is not None and new_files is not None:
        declared = tuple(
            compare_declared(declared_dependencies(old_files), declared_dependencies(new_files))
        )
    packages = None
    old_packages = (old_report or {}).get("packages")
    new_packages = (new_report or {}).get("packages")
    if old_packages is not None and new_packages is not None:
        packages = tuple(compare_manifests(old_packages, new_packages))
    return ImageDiff(
        base_old=base_images(old_files) if old_files is not None else None,
        base_new=base_images(new_files) if new_files is not None else None,
        declared=declared,
        packages=packages,
        python_old=(old_report or {}).get("python"),
        python_new=(new_report or {}).get("python"),
        notes=tuple(notes),
    )
