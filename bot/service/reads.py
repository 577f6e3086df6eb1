"""The commands that only read: help, status, versions, history, diff."""

from __future__ import annotations

from typing import Any

from bot.domain.command_table import help_text
from bot.domain.commands import Diff, Help, History, Status, Versions
from bot.domain.errors import Refused
from bot.domain.model import ImageState
from bot.domain.names import Env, short
from bot.domain.notifications import Act, Offer
from bot.domain.text import age, escape
from bot.service import pages, render
from bot.service import vulnerabilities as vulns
from bot.service.context import Asked, Context
from bot.service.replies import Reply
from bot.service.windows import window_data
from bot.store.uow import Tx


def show_help(ctx: Context, asked: Asked[Help]) -> Reply:
    return Reply(help_text())


def status(ctx: Context, asked: Asked[Status]) -> Reply:
    image = asked.command.image
    if image:
        with ctx.store.read() as tx:
            data: Any = image_status(ctx, tx, image)
        return Reply(render.status_text(data), data)
    with ctx.store.read() as tx:
        data = [image_status(ctx, tx, name) for name in ctx.visible_images(asked.actor)]
    return Reply("\n\n".join(render.status_text(item) for item in data) or "no images", data)


def image_status(ctx: Context, tx: Tx, image: str) -> dict[str, Any]:
    """IMAGE's environments, freeze and approvals as data (status, App Home, the CLI)."""
    state = tx.pointers.state(image)
    now = ctx.store.clock()
    environments: dict[str, Any] = {}
    for env in Env:
        pointer = state.pointer(env)
        if pointer.sha is None:
            environments[env.value] = None
            continue
        version = tx.versions.get(image, pointer.sha)
        environments[env.value] = {
            "sha": pointer.sha,
            "short": short(pointer.sha),
            "generation": pointer.generation,
            "updated_at": pointer.updated_at,
            "age": age(pointer.updated_at, now),
            "updated_by": pointer.updated_by,
            "subject": version.subject if version else None,
            "revoked": bool(version and version.revoked),
            # Counts by severity when a finished scan was read lately (no remote call).
            "vulnerabilities": vulns.known_counts(ctx, image, pointer.sha),
        }
    staging_sha = state.sha(Env.STAGING)
    approvals = None
    if staging_sha:
        check = ctx.policy(tx, image, staging_sha, promoter=None)
        approvals = render.policy_data(staging_sha, check)
    return {
        "image": image,
        "team": ctx.config.images[image].team,
        "channel": ctx.config.images[image].channel,
        "environments": environments,
        "generations": state.generations(),
        "frozen": state.freeze is not None,
        "freeze": (
            {"reason": state.freeze.reason, "by": state.freeze.by, "at": state.freeze.at}
            if state.freeze
            else None
        ),
        "approvals": approvals,
        "freeze_window": window_data(ctx, image),
    }


def versions(ctx: Context, asked: Asked[Versions]) -> Reply:
    command = asked.command
    image = command.image
    with ctx.store.read() as tx:
        page = pages.versions_page(tx, image, limit=command.limit, before=command.before)
    rows = page["items"]
    # Read after the transaction: the scanner is remote (gcp), and slow at worst.
    scans = vulns.version_counts(ctx, image, [r["sha"] for r in rows if r["tests_passed"]])
    for row in rows:
        row["vulnerabilities"] = scans.get(row["sha"])
    lines = [f"*Versions of {image}* (newest first)"]
    for row in rows:
        scanned = vulns.counts_label(row["vulnerabilities"])
        tests = "tests passed" if row["tests_passed"] else "TESTS FAILED"
        where = f" [{', '.join(row['environments'])}]" if row["environments"] else ""
        revoked = " REVOKED" if row["revoked"] else ""
        lines.append(
            f"• `{row['short']}`{where} {tests}{revoked}, {row['approvals']} approval(s), "
            f"{row['created_at'][:16]} {escape(row['subject'] or '')}".rstrip()
            + (f" · {scanned}" if scanned else "")
        )
    if not rows:
        lines.append("no versions yet")
    elif not vulns.scans_here(ctx):
        lines.append(f"_Known vulnerabilities: {vulns.NO_SCANNER}._")
    for scan in scans.values():
        if scan.get("note"):
            lines.append(f"_Known vulnerabilities: {escape(scan['note'])}_")
    lines += _more_line(page, f"versions {image}")
    return Reply("\n".join(lines), page, _more_offer(page, image, "versions"))


def history(ctx: Context, asked: Asked[History]) -> Reply:
    command = asked.command
    image = command.image
    with ctx.store.read() as tx:
        sha = tx.versions.resolve_sha(image, command.sha) if command.sha else None
        page = pages.history_page(tx, image, sha, limit=command.limit, before=command.before)
    title = f"*History of {image}*" + (f" at `{short(sha)}`" if sha else "") + " (newest first)"
    lines = [title] + [render.history_line(entry, about=sha) for entry in page["items"]]
    if not page["items"]:
        lines.append("nothing recorded yet")
    lines += _more_line(page, f"history {image}" + (f" {short(sha)}" if sha else ""))
    return Reply("\n".join(lines), page, _more_offer(page, image, "history", sha))


def _more_line(page: dict[str, Any], command: str) -> list[str]:
    if not page["more"]:
        return []
    return [f"_… {page['more']:,} older: `/nbenv {command} --before {page['next']}`_"]


def _more_offer(
    page: dict[str, Any], image: str, listing: str, sha: str | None = None
) -> tuple[Offer, ...]:
    """The next page, in place of this one (Slack: a button that replaces the answer)."""
    if not page["next"]:
        return ()
    label = f"Older ({page['more']:,} more)"
    return (Offer(Act.MORE, label, image, sha=sha, listing=listing, cursor=page["next"]),)


def diff(ctx: Context, asked: Asked[Diff]) -> Reply:
    command = asked.command
    image = command.image
    with ctx.store.read() as tx:
        state = tx.pointers.state(image)
        old = resolve_ref(tx, state, command.diff_from or Env.PRODUCTION.value)
        new = resolve_ref(tx, state, command.diff_to or Env.STAGING.value)
        reports = {
            sha: (version.report if version else None)
            for sha in (old, new)
            if sha
            for version in [tx.versions.get(image, sha)]
        }
    if ctx.differ is None:
        raise Refused("diff is not available on this backend")
    data = ctx.differ(image, old, new, reports.get(old), reports.get(new))
    return Reply(str(data.get("text") or data), data)


def resolve_ref(tx: Tx, state: ImageState, ref: str) -> str | None:
    """An environment's SHA, or the full SHA a reference stands for."""
    if ref in {env.value for env in Env}:
        return state.sha(Env(ref))
    return tx.versions.resolve_sha(state.image, ref)
