"""Keeping the remote copies of the pointers (registry tags) in line with the store.

A promote or rollback commits in the store first (the truth), then moves the tags step
by step; a step that fails leaves the operation pending, retried at the next start and
by `nbenv recover`.
"""

from __future__ import annotations

from typing import Any

from bot.domain.errors import Conflict, NbenvError
from bot.domain.names import Env
from bot.domain.text import escape
from bot.service.context import Context


def finish_operation(ctx: Context, operation_id: str) -> bool:
    """Bring the remote copies of the pointers in line with the store; idempotent.

    False when a step failed: the operation is then marked failed with the reason
    (shown by `status`, announced in the channel) and `recover` retries it.
    """
    with ctx.store.read() as tx:
        operation = tx.sagas.get(operation_id)
    if operation is None or operation["status"] == "done":
        return True
    image = operation["image"]
    for index, step in enumerate(operation["steps"]):
        if step["done"]:
            continue
        try:
            _sync_pointer(ctx, image, Env(step["env"]))
        except NbenvError as error:
            _operation_failed(ctx, operation, step["env"], error)
            return False
        with ctx.store.write(audited=False) as tx:
            tx.sagas.complete_step(operation_id, index)
    with ctx.store.write(audited=False) as tx:
        tx.sagas.finish(operation_id)
    return True


def _sync_pointer(ctx: Context, image: str, env: Env, rounds: int = 5) -> None:
    """Make the remote copy of ENV say what the store says *now*.

    The store is the truth: a step never replays the SHA its operation set, so an
    older operation being finished cannot overwrite a newer one. Should the pointer
    move while the remote write is under way, the write is repeated with the new
    value, so the last write always carries the store's latest state.
    """
    assert ctx.backend is not None  # only backends that mirror pointers start sagas
    for _ in range(rounds):
        with ctx.store.read() as tx:
            before = tx.pointers.state(image).pointer(env)
        ctx.backend.mirror_pointer(image, env.value, before.sha)
        with ctx.store.read() as tx:
            if tx.pointers.state(image).pointer(env).generation == before.generation:
                return
    raise Conflict(f"{image}.{env.value} kept moving while the registry was updated")


def _operation_failed(ctx: Context, operation: dict[str, Any], env: str, error: NbenvError) -> None:
    image = operation["image"]
    with ctx.store.write() as tx:
        tx.sagas.fail(operation["id"], error.message)
        tx.audit.append(
            actor=operation["actor"],
            action="sync",
            image=image,
            sha=tx.pointers.state(image).sha(Env(env)),
            outcome="failed",
            details={"operation": operation["id"], "env": env, "error": error.message},
        )
        ctx.announce(
            tx,
            image,
            None,
            f"⚠️ The {operation['kind']} of {image} is recorded, but moving the registry "
            f"tag `{env}` failed: {escape(error.message)}. nbenv retries it at its next "
            "start and with `nbenv recover`.",
            key=f"op:{operation['id']}:failed",
        )


def recover(ctx: Context) -> list[str]:
    """Finish every operation a crash or a failure left pending; the IDs it finished.

    One that fails again stays failed (with its reason) for the next attempt.
    """
    with ctx.store.read() as tx:
        pending = [tx.sagas.get(operation_id) for operation_id in tx.sagas.pending()]
    finished = []
    for operation in pending:
        if operation is None or not finish_operation(ctx, operation["id"]):
            continue
        finished.append(operation["id"])
        with ctx.store.write() as tx:
            tx.audit.append(
                actor=operation["actor"],
                action="sync",
                image=operation["image"],
                sha=None,
                details={
                    "operation": operation["id"],
                    "kind": operation["kind"],
                    "recovered": True,
                    "envs": [step["env"] for step in operation["steps"]],
                },
            )
            if operation["status"] == "failed":
                ctx.announce(
                    tx,
                    operation["image"],
                    None,
                    f"✅ The registry tags of {operation['image']} are in line again "
                    f"(the {operation['kind']} is finished).",
                    key=f"op:{operation['id']}:recovered",
                )
    return finished
