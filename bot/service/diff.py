"""`nbenv diff` and the promote confirmation's diff: the service's `differ`.

`Differ(image, old_sha, new_sha, old_report, new_report)` reads the image folder's
dependency files at both SHAs through a `SourceFiles` port (git, wired by the
composition root), compares them and the two test reports' package manifests with
`bot.domain.diff`, and answers with concise Slack mrkdwn in "text" plus the structured
diff. A side it cannot read (no repository, a SHA the repository lacks) becomes a note,
never an error: a promotion must stay possible when only the manifests are known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bot.domain.diff import (
    ADDED,
    CHANGED,
    DOWNGRADED,
    REMOVED,
    UPGRADED,
    Change,
    ImageDiff,
    diff_image,
)
from bot.domain.errors import NbenvError
from bot.domain.names import short
from bot.domain.text import escape

LIST_LIMIT = 8  # changes of one kind listed by name before "and N more"


class SourceFiles(Protocol):
    def image_files(self, image: str, sha: str) -> Mapping[str, str]:
        """The dependency files of IMAGE's folder at SHA, by path inside the folder.

        Raises NbenvError with a one-line reason when they cannot be read.
        """
        ...


class Differ:
    def __init__(self, source: SourceFiles | None = None) -> None:
        self.source = source

    def __call__(
        self,
        image: str,
        old_sha: str | None,
        new_sha: str | None,
        old_report: Mapping[str, Any] | None,
        new_report: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        notes: list[str] = []
        if old_sha is None or new_sha is None:
            return self._one_sided(image, old_sha, new_sha)
        if old_sha == new_sha:
            data = {"image": image, "from": old_sha, "to": new_sha, "same": True}
            data["text"] = f"*{image}*: `{short(old_sha)}` on both sides, nothing differs"
            return data
        old_files = self._files(image, old_sha, notes)
        new_files = self._files(image, new_sha, notes) if old_files is not None else None
        if old_report is None or new_report is None:
            missing = [short(s) for s, r in ((old_sha, old_report), (new_sha, new_report)) if not r]
            notes.append(
                f"no package manifest for `{'`, `'.join(missing)}`: installed packages not compared"
            )
        diff = diff_image(old_files, new_files, old_report, new_report, notes)
        data = {"image": image, "from": old_sha, "to": new_sha, "same": False, **diff.as_dict()}
        data["text"] = render(image, old_sha, new_sha, diff)
        return data

    def _files(self, image: str, sha: str, notes: list[str]) -> Mapping[str, str] | None:
        if self.source is None:
            notes.append("no git repository configured: declared dependencies not compared")
            return None
        try:
            return self.source.image_files(image, sha)
        except NbenvError as error:
            notes.append(f"declared dependencies not compared: {error.message}")
            return None

    def _one_sided(self, image: str, old_sha: str | None, new_sha: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"image": image, "from": old_sha, "to": new_sha, "same": False}
        if old_sha is None and new_sha is None:
            data["text"] = f"*{image}*: neither side points at a version: nothing to compare"
        elif old_sha is None:
            data["text"] = (
                f"*{image}*: nothing to compare `{short(new_sha)}` with "
                "(the other side points at no version yet): it would be the first"
            )
        else:
            data["text"] = f"*{image}*: `{short(old_sha)}` is compared with no version"
        return data


# -- rendering -------------------------------------------------------------------------------


def _pkg(change: Change) -> str:
    name = escape(change.name)
    if change.kind == ADDED:
        return f"`{name}` {escape(change.new)}".rstrip()
    if change.kind == REMOVED:
        return f"`{name}` {escape(change.old)}".rstrip()
    return f"`{name}` {escape(change.old) or '(any)'} → {escape(change.new) or '(any)'}"


def _spec(change: Change, side: str | None) -> str:
    return f"`{escape(change.name)}{escape(side or '')}`"


def _declared_line(changes: Sequence[Change]) -> str:
    parts = []
    for change in changes:
        if change.kind == ADDED:
            parts.append(f"+{_spec(change, change.new)}")
        elif change.kind == REMOVED:
            parts.append(f"−{_spec(change, change.old)}")
        else:
            arrow = {UPGRADED: "↑", DOWNGRADED: "↓"}.get(change.kind, "~")
            parts.append(
                f"{arrow}`{escape(change.name)}` {escape(change.old) or '(any)'} → "
                f"{escape(change.new) or '(any)'}"
            )
    return ", ".join(parts)


def _listed(changes: Sequence[Change]) -> str:
    shown = ", ".join(_pkg(c) for c in changes[:LIST_LIMIT])
    more = len(changes) - LIST_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def render(image: str, old_sha: str, new_sha: str, diff: ImageDiff) -> str:
    lines = [f"*Diff of {escape(image)}* `{short(old_sha)}` → `{short(new_sha)}`"]
    if diff.base_changed:
        old = ", ".join(diff.base_old or ()) or "(none)"
        new = ", ".join(diff.base_new or ()) or "(none)"
        # Registry paths are long and usually shared: say the shared part once.
        old_parts, new_parts = old.split("/"), new.split("/")
        common = 0
        while common < min(len(old_parts), len(new_parts)) - 1 and (
            old_parts[common] == new_parts[common]
        ):
            common += 1
        shared = "/".join(old_parts[:common])
        where = f" ({escape(shared)}/…)" if shared else ""
        old, new = "/".join(old_parts[common:]), "/".join(new_parts[common:])
        lines.append(f"• Base image{where}: `{escape(old)}` → `{escape(new)}`")
    elif diff.base_new:
        lines.append(f"• Base image unchanged: `{escape(', '.join(diff.base_new))}`")
    if diff.declared:
        lines.append(f"• Declared dependencies: {_declared_line(diff.declared)}")
    elif diff.declared is not None:
        lines.append("• Declared dependencies unchanged")
    if diff.python_changed:
        lines.append(f"• Python {escape(diff.python_old)} → {escape(diff.python_new)}")
    if diff.packages is not None:
        by_kind = {
            kind: [c for c in diff.packages if c.kind == kind]
            for kind in (UPGRADED, DOWNGRADED, ADDED, REMOVED, CHANGED)
        }
        counts = ", ".join(f"{len(v)} {k}" for k, v in by_kind.items() if v)
        lines.append(f"• Installed packages: {counts or 'no changes'}")
        marks = {UPGRADED: "↑", DOWNGRADED: "↓", ADDED: "+", REMOVED: "−", CHANGED: "~"}
        for kind, changes in by_kind.items():
            if changes:
                lines.append(f"   {marks[kind]} {_listed(changes)}")
    for note in diff.notes:
        lines.append(f"_{escape(note)}_")
    return "\n".join(lines)
