"""Notebook instances: asked for (queued), started by a job, listed, stopped; and who
still runs a version that was rolled back."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from bot.domain.commands import Instance, Instances
from bot.domain.errors import BadInput, NbenvError, Refused
from bot.domain.idle import idle_stop_text
from bot.domain.names import Env, short
from bot.domain.notifications import Act, DirectMessage, Offer, PrivateAnswer
from bot.domain.policy import Role
from bot.domain.text import escape, mention
from bot.service import render
from bot.service.context import Asked, Context
from bot.service.ports import InstanceInfo, InstanceRequest, ListsInstances
from bot.service.replies import Reply

log = logging.getLogger(__name__)


def instance(ctx: Context, asked: Asked[Instance]) -> Reply:
    actor, command = asked.actor, asked.command
    image, env = command.image, command.env
    refusal = ctx.backend.instance_refusal(actor) if ctx.backend is not None else None
    if refusal:  # before anything is queued (the job checks again)
        raise Refused(refusal)
    with ctx.write(asked.key) as tx:
        if tx is None:
            return Reply("instance already requested (retried request)", {"retried": True})
        sha = tx.pointers.state(image).sha(env)
        if sha is None:
            raise Refused(f"{image} has nothing in {env.value}: no instance to create")
        name = command.instance_name or render.instance_name(image, env.value, actor, sha)
        if tx.instances.get(name) is not None:
            raise Refused(f"an instance named {name} already exists")
        job_key = asked.key or f"instance:{name}"
        payload = {"image": image, "env": env.value, "sha": sha, "name": name, "actor": actor}
        if ctx.run_by_operator:
            payload["operator"] = True
        details = {"env": env.value, "name": name}
        ctx.queue(tx, "instance", job_key, payload, asked.reply_to, sha=sha, details=details)
    return Reply(
        f"🖥 creating instance `{name}` of {image} from {env.value} (`{short(sha)}`)…",
        {"image": image, "env": env.value, "sha": sha, "name": name, "job": job_key},
    )


def create_instance(ctx: Context, payload: dict[str, Any]) -> InstanceInfo:
    """Job handler: start the instance an `instance` command queued, and record it."""
    if ctx.backend is None:
        raise Refused("no backend is configured to create instances")
    request = InstanceRequest(
        name=payload["name"],
        image=payload["image"],
        env=payload["env"],
        sha=payload["sha"],
        requested_by=payload["actor"],
        for_operator=payload.get("operator") is True,
    )
    with ctx.store.read() as tx:
        existing = tx.instances.get(request.name)
    if existing is not None:  # a redelivered job: the instance exists already
        return InstanceInfo(
            existing["name"], existing["url"], existing["state"], existing["details"]
        )
    try:
        info = ctx.backend.start_instance(request)
    except Refused as refusal:  # e.g. not offered to this person (local.shared_instances)
        with ctx.store.write() as tx:
            tx.audit.append(
                actor=request.requested_by,
                action="instance",
                image=request.image,
                sha=request.sha,
                outcome="refused",
                details={"name": request.name, "reason": refusal.message},
            )
        raise
    except NbenvError as error:  # the backend could not start it
        details = {"name": request.name, "env": request.env}
        ctx.audit_failure(
            request.requested_by, "instance", request.image, request.sha, error.message, details
        )
        raise
    with ctx.store.write() as tx:
        tx.instances.add(
            name=request.name,
            image=request.image,
            env=request.env,
            sha=request.sha,
            requested_by=request.requested_by,
            backend=ctx.backend.name,
            url=info.url,
            state=info.state,
            details=info.details,
        )
        tx.audit.append(
            actor=request.requested_by,
            action="instance-ready",
            image=request.image,
            sha=request.sha,
            outcome="failed" if info.state == "failed" else "ok",
            # No link: history is readable by every user of the image, and the link
            # opens the requester's notebook.
            details={"name": request.name, "env": request.env, "state": info.state},
        )
        reply_to = payload.get("reply_to")
        text = (
            f"🖥 instance `{request.name}` of {request.image} ({request.env}, "
            f"`{short(request.sha)}`) is {info.state}"
            + (
                f" ({idle_stop_text(info.details['idle_timeout_s'])})"
                if "idle_timeout_s" in info.details
                else ""
            )
            + (f": {info.url}" if info.url else "")
            + (f"\n{escape(str(info.details.get('note')))}" if info.details.get("note") else "")
        )
        if reply_to:
            answer = PrivateAnswer(reply_to, request.requested_by, text)
            ctx.notify(tx, f"instance-ready:{request.name}", answer)
    return info


def instances(ctx: Context, asked: Asked[Instances]) -> Reply:
    actor, command = asked.actor, asked.command
    if command.stop:
        return _stop(ctx, actor, command.stop)
    images = [command.image] if command.image else ctx.visible_images(actor)
    with ctx.store.read() as tx:
        rows = [row for image in images for row in tx.instances.matching(image=image)]
        revoked = {
            (row["image"], row["sha"])
            for row in rows
            for version in [tx.versions.get(row["image"], row["sha"])]
            if version is not None and version.revoked
        }
    shown = [
        render.instance_listing(row, actor, revoked=(row["image"], row["sha"]) in revoked)
        for row in rows
    ]
    lines = ["*Instances*"] + [render.instance_line(item) for item in shown]
    if not rows:
        lines.append("none")
    return Reply("\n".join(lines), shown)


def _stop(ctx: Context, actor: str, name: str) -> Reply:
    with ctx.store.read() as tx:
        row = tx.instances.get(name)
    if row is None:
        raise BadInput(f"no instance named {name!r}")
    role = ctx.require(actor, row["image"], Role.USER, "stopping an instance")
    if row["requested_by"] != actor and role < Role.OWNER:
        raise Refused(
            f"{name} belongs to {mention(row['requested_by'])}: only they or an owner can stop it"
        )
    if ctx.backend is not None and row["state"] in ("starting", "running"):
        ctx.backend.stop_instance(name, row["details"])
    with ctx.store.write() as tx:
        tx.instances.update(name, state="stopped", stopped_at=tx.now)
        tx.audit.append(
            actor=actor,
            action="instance-stop",
            image=row["image"],
            sha=row["sha"],
            details={"name": name},
        )
    return Reply(f"stopped instance `{name}`")


def who_runs(ctx: Context, image: str, shas: Iterable[str | None]) -> dict[str, list[str]]:
    """SHA → the users running an instance of it (one entry per instance)."""
    wanted = [sha for sha in dict.fromkeys(shas) if sha]
    running = running_instances(ctx, image, wanted)
    return {sha: [user for _, user in running[sha]] for sha in wanted}


def running_instances(
    ctx: Context, image: str, shas: list[str]
) -> dict[str, list[tuple[str, str]]]:
    """SHA → (instance name, user) of each instance running it that is starting or running.

    From the backend's own listing where it has one (gcp: Workbench instances by
    label, so instances stopped or made outside nbenv count as they are), else from
    the instances nbenv recorded. A backend that cannot answer leaves the record.
    """
    with ctx.store.read() as tx:
        found = {
            sha: [
                (row["name"], row["requested_by"])
                for row in tx.instances.matching(image=image, sha=sha, active=True)
            ]
            for sha in shas
        }
    if not isinstance(ctx.backend, ListsInstances) or not shas:
        return found
    try:
        listed = ctx.backend.instances_by_label(image)
    except NbenvError as error:
        log.warning("who runs %s: the backend's instance list is unavailable: %s", image, error)
        return found
    return {
        sha: [
            (i.name, i.requested_by)
            for i in listed
            if i.sha == sha and i.requested_by and i.state in ("starting", "running")
        ]
        for sha in shas
    }


MAX_STOP_BUTTONS = 5  # per message: a person with more gets `/nbenv instances --stop NAME`


def tell_instance_owners(ctx: Context, image: str, sha: str, operation_id: str) -> None:
    """After a rollback (never before: it is the emergency exit), ask those still
    running the revoked SHA to move: in its thread, and each of them directly, with a
    button to start a replacement from production and one to stop each old instance.
    Nothing is stopped unless its owner presses."""
    running = running_instances(ctx, image, [sha])[sha]
    if not running:
        return
    users = [user for _, user in running]
    people = ", ".join(mention(user) for user in dict.fromkeys(users))
    with ctx.store.write(audited=False) as tx:
        ctx.announce(
            tx,
            image,
            sha,
            f"🖥 Still running `{short(sha)}`: {people} ({len(users)} instance(s)). "
            f"Please recreate them from production: `/nbenv instance {image}`.",
            key=f"op:{operation_id}:instance-owners",
        )
        production = tx.pointers.state(image).sha(Env.PRODUCTION)
        for user in dict.fromkeys(users):
            names = [name for name, owner in running if owner == user]
            message = DirectMessage(
                user,
                _move_text(image, sha, production, names),
                _move_offers(image, production, names),
            )
            ctx.notify(tx, f"tell:op:{operation_id}:instance-owner:{user}", message)


def _move_text(image: str, sha: str, production: str | None, names: list[str]) -> str:
    listed = ", ".join(f"`{name}`" for name in names)
    return (
        f"⏪ {image} was rolled back: `{short(sha)}` is revoked, and your instance(s) "
        f"{listed} still run it. Start a replacement from production "
        f"(`{short(production)}`), then stop the old one when your work is saved: "
        "nothing is stopped until you press."
    )


def _move_offers(image: str, production: str | None, names: list[str]) -> tuple[Offer, ...]:
    offers = []
    if production:
        label = "Start a replacement from production"
        offers.append(
            Offer(Act.REPLACE, label, image, env=Env.PRODUCTION.value, emphasis="primary")
        )
    for name in names[:MAX_STOP_BUTTONS]:
        offers.append(Offer(Act.STOP, f"Stop {name}", image, name=name, emphasis="danger"))
    return tuple(offers)
