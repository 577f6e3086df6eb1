"""The nbenv use cases, one method per command.

Every entry point (Slack, CLI, console shell, build relay) goes through `Nbenv`, so a
rule holds the same wherever a request comes from. State changes commit together with
their audit entry and the Slack announcements they cause (queued in the outbox), so a
crash can lose none of them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from bot.config import Config
from bot.domain import operations as ops
from bot.domain.audit import ChainCheck, verify_chain
from bot.domain.builds import what_a_build_will_do
from bot.domain.commands import Command, help_text, parse
from bot.domain.errors import BadInput, Conflict, NbenvError, Refused
from bot.domain.model import ImageState, Version
from bot.domain.names import Actor, Env, check_full_sha, is_full_sha, short
from bot.domain.policy import EVERYONE, PolicyCheck, Role, check_policy, require_role
from bot.domain.text import age, escape, mention, to_plain
from bot.service import access, render
from bot.service.access import as_actor, is_pipeline
from bot.service.ports import Backend, InstanceInfo, InstanceRequest, ListsInstances
from bot.store.uow import Store, Tx

log = logging.getLogger(__name__)

# Cloud Build's statuses of a build that ran and did not succeed.
FAILED_BUILD_STATUSES = {"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}
MAX_AUDITED_REASON = 2000  # a failure's reason kept in the log (tracebacks can be long)


@dataclass(frozen=True)
class Button:
    action_id: str
    text: str
    value: dict[str, Any]
    style: str | None = None  # primary | danger


@dataclass
class Reply:
    """What the person who asked sees (ephemeral in Slack, stdout in the CLI)."""

    text: str
    data: Any = None
    buttons: list[Button] = field(default_factory=list)


def report_passed(report: dict[str, Any] | None) -> bool:
    if not report:
        return True
    notebooks = report.get("notebooks") or []
    return all(item.get("status") == "passed" for item in notebooks)


class Nbenv:
    def __init__(
        self,
        config: Config,
        store: Store,
        backend: Backend | None = None,
        differ: Callable[..., dict[str, Any]] | None = None,
        *,
        run_by_operator: bool = False,
    ) -> None:
        """RUN_BY_OPERATOR: this entry point is used by the person who runs nbenv (CLI,
        console), not by people through Slack; instances they ask for may share the bot's
        OS user on the local backend (see `local.shared_instances`)."""
        self.config = config
        self.store = store
        self.backend = backend
        self.differ = differ
        self.run_by_operator = run_by_operator

    # -- entry -----------------------------------------------------------------------------

    def handle(self, actor: Actor | str, text: str, *, key: str | None = None) -> Reply:
        """Run TEXT exactly as it would follow `/nbenv`, as ACTOR."""
        return self.execute(actor, parse(text), key=key)

    def execute(
        self,
        actor: Actor | str,
        command: Command,
        *,
        key: str | None = None,
        expect: dict[str, int] | ops.Seen | None = None,
        reply_to: str | None = None,
    ) -> Reply:
        """REPLY_TO: a Slack response_url where slow work (build, instance) answers when done.

        EXPECT: the environments as whoever decided saw them (their generations, or a
        Seen); a promote or rollback is refused, and the refusal audited, if they moved.
        """
        self.check(actor, command)
        if key is not None and not command.read_only:
            with self.store.read() as tx:
                if tx.idempotency.claimed(key) is not None:
                    return Reply("already done (retried request)", {"retried": True})
        handler = getattr(self, f"_cmd_{command.name}")
        try:
            return handler(actor, command, key=key, expect=expect, reply_to=reply_to)
        except (Refused, Conflict) as refusal:
            if command.dry_run:
                # Said as a dry run, like the plan it would have shown: nothing was tried.
                dry = type(refusal)(
                    f"Dry run — {command.name} {command.image} would be refused: {refusal.message}"
                )
                self._audit_refusal(actor, command, dry)
                raise dry from refusal
            self._audit_refusal(actor, command, refusal)
            raise

    def check(self, actor: Actor | str, command: Command) -> None:
        """What every command passes first: a known user and a known image (config only)."""
        access.check(self.config, actor, command)

    def require(self, actor: Actor | str, command: Command, needed: Role) -> Role:
        """ACTOR's role when it is at least NEEDED for COMMAND; a refusal is audited.

        For adapters that must check a role before asking for more input (a dialog).
        """
        self.check(actor, command)
        assert command.image
        try:
            return self._require(actor, command.image, needed, command.name)
        except Refused as refusal:
            self._audit_refusal(actor, command, refusal)
            raise

    def _check_actor(self, actor: str) -> None:
        access.check_actor(self.config, actor)

    def _check_image(self, image: str) -> None:
        access.check_image(self.config, image)

    def _require(self, actor: str, image: str, needed: Role, action: str) -> Role:
        if is_pipeline(actor):
            return Role.OWNER
        team = self.config.images[image].team
        return require_role(
            self.config.team_roles(image), actor, needed, action=action, image=image, team=team
        )

    def _audit_refusal(self, actor: str, command: Command, refusal: NbenvError) -> None:
        with self.store.write() as tx:
            image, sha = command.image, self._concerned_sha(tx, command)
            if command.stop:
                # `instances --stop NAME` names no image: file it under the instance's.
                instance = tx.instances.get(command.stop)
                if instance is not None:
                    image, sha = instance["image"], instance["sha"]
            details = {
                # Plain text, as every other entry: history renders its mentions.
                "reason": to_plain(refusal.message),
                "command": render.command_details(command),
            }
            tx.audit.append(
                actor=actor,
                action=command.name,
                image=image,
                sha=sha,
                outcome="refused",
                details=details,
            )

    def _concerned_sha(self, tx: Tx, command: Command) -> str | None:
        """The SHA a refusal is filed under, so `history IMAGE SHA` shows it too."""
        if command.sha and len(command.sha) == 40:
            return command.sha
        if command.image is None or command.image not in self.config.images:
            return None
        if command.sha or command.to:
            try:
                return tx.versions.resolve_sha(command.image, command.sha or command.to or "")
            except NbenvError:
                return None
        implied = {
            "promote": Env.STAGING,
            "approve": Env.STAGING,
            "reject": Env.STAGING,
            "rollback": Env.PRODUCTION,
            "instance": command.env,
        }.get(command.name)
        return tx.pointers.state(command.image).sha(implied) if implied else None

    @contextmanager
    def _write(self, key: str | None) -> Iterator[Tx | None]:
        """A write transaction that claims idempotency KEY; yields None on a retry."""
        with self.store.write() as tx:
            if key is not None and not tx.idempotency.claim(key):
                yield None
                return
            yield tx

    # -- read-only -------------------------------------------------------------------------

    def _cmd_help(self, actor: str, command: Command, **_: Any) -> Reply:
        return Reply(help_text())

    def visible_images(self, actor: Actor | str) -> list[str]:
        actor = as_actor(actor)
        if is_pipeline(actor):
            return sorted(self.config.images)
        return sorted(
            name for name in self.config.images if self.config.role_of(name, actor) is not None
        )

    def _cmd_status(self, actor: str, command: Command, **_: Any) -> Reply:
        if command.image:
            self._require(actor, command.image, Role.USER, "status")
            with self.store.read() as tx:
                data: Any = self.image_status(tx, command.image)
            return Reply(render.status_text(data), data)
        with self.store.read() as tx:
            data = [self.image_status(tx, name) for name in self.visible_images(actor)]
        return Reply("\n\n".join(render.status_text(item) for item in data) or "no images", data)

    def image_status(self, tx: Tx, image: str) -> dict[str, Any]:
        state = tx.pointers.state(image)
        now = self.store.clock()
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
            }
        staging_sha = state.sha(Env.STAGING)
        approvals = None
        if staging_sha:
            check = self._policy(tx, image, staging_sha, promoter=None)
            approvals = render.policy_data(staging_sha, check)
        return {
            "image": image,
            "team": self.config.images[image].team,
            "channel": self.config.images[image].channel,
            "environments": environments,
            "generations": state.generations(),
            "frozen": state.freeze is not None,
            "freeze": (
                {"reason": state.freeze.reason, "by": state.freeze.by, "at": state.freeze.at}
                if state.freeze
                else None
            ),
            "approvals": approvals,
        }

    def _cmd_versions(self, actor: str, command: Command, **_: Any) -> Reply:
        image = command.image
        assert image
        self._require(actor, image, Role.USER, "versions")
        with self.store.read() as tx:
            state = tx.pointers.state(image)
            rows = []
            for version in tx.versions.of_image(image):
                envs = [env.value for env in Env if state.sha(env) == version.sha]
                verdicts = tx.approvals.standing(image, version.sha)
                rows.append(render.version_data(version, envs, verdicts))
        lines = [f"*Versions of {image}* (newest first)"]
        for row in rows:
            tests = "tests passed" if row["tests_passed"] else "TESTS FAILED"
            where = f" [{', '.join(row['environments'])}]" if row["environments"] else ""
            revoked = " REVOKED" if row["revoked"] else ""
            lines.append(
                f"• `{row['short']}`{where} {tests}{revoked}, {row['approvals']} approval(s), "
                f"{row['created_at'][:16]} {escape(row['subject'] or '')}".rstrip()
            )
        if not rows:
            lines.append("no versions yet")
        return Reply("\n".join(lines), rows)

    def _cmd_history(self, actor: str, command: Command, **_: Any) -> Reply:
        image = command.image
        assert image
        self._require(actor, image, Role.USER, "history")
        with self.store.read() as tx:
            sha = tx.versions.resolve_sha(image, command.sha) if command.sha else None
            entries = tx.audit.entries(image=image, sha=sha)
        data = [render.audit_data(entry) for entry in entries]
        title = f"*History of {image}*" + (f" at `{short(sha)}`" if sha else "")
        lines = [title] + [render.history_line(entry, about=sha) for entry in data]
        if not data:
            lines.append("nothing recorded yet")
        return Reply("\n".join(lines), data)

    def _cmd_diff(self, actor: str, command: Command, **_: Any) -> Reply:
        image = command.image
        assert image
        self._require(actor, image, Role.USER, "diff")
        with self.store.read() as tx:
            state = tx.pointers.state(image)
            old = self._resolve_ref(tx, state, command.diff_from or Env.PRODUCTION.value)
            new = self._resolve_ref(tx, state, command.diff_to or Env.STAGING.value)
            reports = {
                sha: (version.report if version else None)
                for sha in (old, new)
                if sha
                for version in [tx.versions.get(image, sha)]
            }
        if self.differ is None:
            raise Refused("diff is not available on this backend")
        data = self.differ(image, old, new, reports.get(old), reports.get(new))
        return Reply(str(data.get("text") or data), data)

    def _resolve_ref(self, tx: Tx, state: ImageState, ref: str) -> str | None:
        if ref in {env.value for env in Env}:
            return state.sha(Env(ref))
        return tx.versions.resolve_sha(state.image, ref)

    # -- approvals -------------------------------------------------------------------------

    def _policy(self, tx: Tx, image: str, sha: str, promoter: str | None) -> PolicyCheck:
        settings = self.config.images[image]
        return check_policy(
            tx.approvals.standing(image, sha),
            required=settings.approvals,
            roles=self.config.team_roles(image),
            promoter=promoter,
            owner_approval_counts=settings.owner_approval_counts,
        )

    def _target_sha(self, tx: Tx, image: str, ref: str | None) -> str:
        if ref:
            return tx.versions.resolve_sha(image, ref)
        staging = tx.pointers.state(image).sha(Env.STAGING)
        if staging is None:
            raise Refused(f"{image} has nothing in staging to approve or reject")
        return staging

    def _cmd_approve(self, actor: str, command: Command, *, key: str | None = None, **_: Any):
        return self._verdict(actor, command, approved=True, key=key)

    def _cmd_reject(self, actor: str, command: Command, *, key: str | None = None, **_: Any):
        return self._verdict(actor, command, approved=False, key=key)

    def _verdict(self, actor: str, command: Command, *, approved: bool, key: str | None) -> Reply:
        image = command.image
        assert image
        action = "approve" if approved else "reject"
        self._require(actor, image, Role.TESTER, action)
        with self._write(key) as tx:
            if tx is None:
                return Reply("already recorded (retried request)")
            sha = self._target_sha(tx, image, command.sha)
            version = tx.versions.get(image, sha)
            assert version is not None
            if approved and not version.tests_passed:
                raise Refused(f"{short(sha)} of {image} failed its automated tests")
            current = {v.user: v for v in tx.approvals.standing(image, sha)}.get(actor)
            if current is not None and current.approved and approved:
                return Reply(f"you already approved `{short(sha)}` of {image}")
            tx.approvals.add(image, sha, actor, approved=approved, reason=command.reason)
            details: dict[str, Any] = {"reason": command.reason}
            if approved and version.revoked:
                # A fresh approval is what a revoked version was waiting for: every view
                # stops calling it revoked; the log keeps the revocation it ends.
                tx.versions.clear_revocation(image, sha)
                details["ends_revocation"] = {
                    "at": version.revoked_at,
                    "by": version.revoked_by,
                    "reason": version.revoked_reason,
                }
            check = self._policy(tx, image, sha, promoter=None)
            details["policy"] = render.policy_data(sha, check)
            tx.audit.append(actor=actor, action=action, image=image, sha=sha, details=details)
            if approved:
                text = f"✅ {mention(actor)} approved `{short(sha)}` — {check.summary()}"
            else:
                text = (
                    f"⛔ {mention(actor)} rejected `{short(sha)}`: {escape(command.reason)} — "
                    "promotion is blocked until they approve or an owner overrides"
                )
            buttons = []
            staging = tx.pointers.state(image).sha(Env.STAGING)
            if approved and check.met and sha == staging:
                text += "\nThe approval policy is met: an owner can promote."
                buttons.append(
                    Button("nbenv_promote", "Promote", {"image": image, "sha": sha}, "primary")
                )
            self._announce(
                tx, image, sha, text, key=f"{action}:{image}:{sha}:{tx.now}", buttons=buttons
            )
        return Reply(text, {"image": image, "sha": sha, "policy": render.policy_data(sha, check)})

    # -- environments ----------------------------------------------------------------------

    def _cmd_promote(
        self,
        actor: str,
        command: Command,
        *,
        key: str | None = None,
        expect: dict[str, int] | ops.Seen | None = None,
        **_: Any,
    ) -> Reply:
        """promote and rollback: plan in a read, then apply with compare-and-swap."""
        image = command.image
        assert image
        self._require(actor, image, Role.OWNER, command.name)
        seen = ops.Seen(expect) if isinstance(expect, dict) else expect
        with self.store.read() as tx:
            if seen is not None:
                # Checked before planning, so the owner hears what moved rather than why
                # today's plan would fail; checked again when writing (races).
                seen.refuse_if_moved(tx.pointers.state(image), command.name)
            plan, preview = self._preview_in(tx, actor, command)
        if command.dry_run:
            return Reply(render.plan_text(plan, preview, dry_run=True), preview)
        return self._apply(actor, plan, key=key, expect=seen, preview=preview)

    _cmd_rollback = _cmd_promote

    def _preview_in(self, tx: Tx, actor: str, command: Command) -> tuple[ops.Plan, dict[str, Any]]:
        if command.name == "promote":
            plan, check = self._plan_promote(tx, actor, command)
            return plan, self._plan_data(tx, plan, check)
        plan = self._plan_rollback(tx, command)
        return plan, self._plan_data(tx, plan, None)

    def _plan_promote(self, tx: Tx, actor: str, command: Command) -> tuple[ops.Plan, PolicyCheck]:
        image = command.image
        assert image
        state = tx.pointers.state(image)
        staging_sha = state.sha(Env.STAGING)
        staging = tx.versions.get(image, staging_sha) if staging_sha else None
        check = self._policy(tx, image, staging_sha, promoter=actor) if staging_sha else None
        plan = ops.plan_promote(
            state,
            staging,
            check or PolicyCheck(0, (), (), ()),
            force=command.force,
            reason=command.reason,
        )
        assert check is not None
        return plan, check

    def preview(self, actor: Actor | str, command: Command) -> dict[str, Any]:
        """The plan a destructive command would carry out, for a confirmation dialog."""
        self._check_actor(actor)
        assert command.image
        self._check_image(command.image)
        try:
            self._require(actor, command.image, Role.OWNER, command.name)
            with self.store.read() as tx:
                return self._preview_in(tx, actor, command)[1]
        except (Refused, Conflict) as refusal:
            self._audit_refusal(actor, command, refusal)
            raise

    def _plan_data(self, tx: Tx, plan: ops.Plan, check: PolicyCheck | None) -> dict[str, Any]:
        state = tx.pointers.state(plan.image)
        data: dict[str, Any] = {
            "action": plan.action,
            "image": plan.image,
            "sha": plan.sha,
            "changes": [
                {
                    "env": c.env.value,
                    "old": c.old,
                    "new": c.new,
                    "generation": c.expected_generation,
                }
                for c in plan.changes
            ],
            "revoke": plan.revoke,
            "expect": state.generations(),
            "details": plan.details,
        }
        if check is not None:
            data["approvals"] = render.policy_data(plan.sha, check)
        if self.differ is not None and plan.action == "promote":
            old = plan.change(Env.PRODUCTION).old if plan.change(Env.PRODUCTION) else None
            old_version = tx.versions.get(plan.image, old) if old else None
            new_version = tx.versions.get(plan.image, plan.sha)
            try:
                data["diff"] = self.differ(
                    plan.image,
                    old,
                    plan.sha,
                    old_version.report if old_version else None,
                    new_version.report if new_version else None,
                )
            except NbenvError as error:
                data["diff"] = {"text": f"diff unavailable: {error.message}"}
        return data

    def _plan_rollback(self, tx: Tx, command: Command) -> ops.Plan:
        image = command.image
        assert image
        state = tx.pointers.state(image)
        if command.to:
            target = tx.versions.get(image, tx.versions.resolve_sha(image, command.to))
            assert target is not None
            return ops.plan_rollback_to(state, target, force=command.force, reason=command.reason)
        return ops.plan_rollback(state, reason=command.reason)

    def publish(
        self,
        actor: Actor | str,
        image: str,
        sha: str,
        *,
        report: dict[str, Any] | None = None,
        subject: str | None = None,
        branch: str | None = None,
        build_id: str | None = None,
        key: str | None = None,
    ) -> Reply:
        """Record a tested version and point staging at it (owners and the pipeline)."""
        self._check_actor(actor)
        self._check_image(image)
        sha = check_full_sha(sha)
        command = Command("publish", image=image, sha=sha)

        def version_at(now: str) -> Version:
            return Version(
                image=image,
                sha=sha,
                tests_passed=report_passed(report),
                created_at=now,
                recorded_by=actor,
                subject=subject,
                branch=branch,
                build_id=build_id,
                report=report,
            )

        def record_and_plan(tx: Tx) -> ops.Plan:
            # Recorded in the same transaction as the pointer move and the idempotency
            # key: a crash between them can't leave a retry that "already published".
            return ops.plan_publish(
                tx.pointers.state(image), tx.versions.record(version_at(tx.now))
            )

        try:
            self._require(actor, image, Role.OWNER, "publish")
            with self.store.read() as tx:
                plan = ops.plan_publish(tx.pointers.state(image), version_at(tx.now))
            return self._apply(
                actor, plan, key=key, expect=None, preview={"image": image}, replan=record_and_plan
            )
        except (Refused, Conflict) as refusal:
            # The version itself stays recorded (a failed build is history too).
            self._record_failed_version(actor, image, sha, report, subject, branch, build_id)
            self._audit_refusal(actor, command, refusal)
            raise

    def record_version(
        self,
        actor: str,
        image: str,
        sha: str,
        *,
        report: dict[str, Any] | None,
        subject: str | None = None,
        branch: str | None = None,
        build_id: str | None = None,
    ) -> None:
        """Keep a built version (passed or failed) without moving any environment."""
        self._check_image(image)
        with self.store.write() as tx:
            tx.versions.record(
                Version(
                    image=image,
                    sha=check_full_sha(sha),
                    tests_passed=report_passed(report),
                    created_at=tx.now,
                    recorded_by=actor,
                    subject=subject,
                    branch=branch,
                    build_id=build_id,
                    report=report,
                )
            )
            tx.audit.append(
                actor=actor,
                action="record",
                image=image,
                sha=sha,
                details={
                    "tests_passed": report_passed(report),
                    "branch": branch,
                    "build_id": build_id,
                },
            )

    def _record_failed_version(self, actor, image, sha, report, subject, branch, build_id) -> None:  # type: ignore[no-untyped-def]
        if report is not None and not report_passed(report):
            with self.store.write(audited=False) as tx:
                tx.versions.record(
                    Version(
                        image, sha, False, tx.now, actor, subject, branch, build_id, report=report
                    )
                )

    def _apply(
        self,
        actor: str,
        plan: ops.Plan,
        *,
        key: str | None,
        expect: ops.Seen | None,
        preview: dict[str, Any],
        replan: Callable[[Tx], ops.Plan] | None = None,
    ) -> Reply:
        """Commit PLAN with compare-and-swap, its audit entry and announcement, then sync.

        REPLAN, when given, makes the plan again inside the write transaction (after the
        checks that must stay outside it, like the registry's), so what it records commits
        together with the change.
        """
        operation_id = str(uuid.uuid4())
        self._check_versions(plan)
        with self._write(key) as tx:
            if tx is None:
                return Reply("already done (retried request)", {"retried": True})
            if replan is not None:
                plan = replan(tx)
            if expect is not None:
                expect.refuse_if_moved(tx.pointers.state(plan.image), plan.action)
            tx.pointers.apply(plan, actor=actor, operation_id=operation_id)
            steps = []
            if plan.changes and self.backend is not None and self.backend.mirrors_pointers():
                steps = [{"env": c.env.value, "done": False} for c in plan.changes]
                tx.sagas.start(operation_id, plan.action, plan.image, actor, steps)
            details = dict(plan.details)
            details["changes"] = preview.get("changes") or [
                {"env": c.env.value, "old": c.old, "new": c.new} for c in plan.changes
            ]
            if plan.revoke:
                details["revoked"] = plan.revoke
            tx.audit.append(
                actor=actor, action=plan.action, image=plan.image, sha=plan.sha, details=details
            )
            text = render.announcement(actor, plan)
            if plan.changes:
                self._announce_plan(tx, plan, text, operation_id)
        synced = self.finish_operation(operation_id) if steps else True
        if not synced:
            with self.store.read() as tx:
                operation = tx.sagas.get(operation_id)
            text += (
                f"\n⚠️ Recorded, but the registry is not in line yet: "
                f"{escape((operation or {}).get('error'))}. "
                "nbenv finishes it at its next start or with `nbenv recover`."
            )
        if plan.revoke:
            self._tell_instance_owners(plan.image, plan.revoke, operation_id)
        return Reply(
            text, {**preview, "operation": operation_id, "applied": True, "synced": synced}
        )

    def who_runs(self, image: str, shas: Iterable[str | None]) -> dict[str, list[str]]:
        """SHA → the users running an instance of it (one entry per instance).

        From the backend's own listing where it has one (gcp: Workbench instances by
        label, so instances stopped or made outside nbenv count as they are), else from
        the instances nbenv recorded. A backend that cannot answer leaves the record.
        """
        wanted = [sha for sha in dict.fromkeys(shas) if sha]
        with self.store.read() as tx:
            found = {
                sha: [
                    row["requested_by"]
                    for row in tx.instances.matching(image=image, sha=sha, active=True)
                ]
                for sha in wanted
            }
        if not isinstance(self.backend, ListsInstances) or not wanted:
            return found
        try:
            listed = self.backend.instances_by_label(image)
        except NbenvError as error:
            log.warning("who runs %s: the backend's instance list is unavailable: %s", image, error)
            return found
        return {
            sha: [
                i.requested_by
                for i in listed
                if i.sha == sha and i.requested_by and i.state in ("starting", "running")
            ]
            for sha in wanted
        }

    def _tell_instance_owners(self, image: str, sha: str, operation_id: str) -> None:
        """After a rollback (never before: it is the emergency exit), ask those still
        running the revoked SHA to move, in its thread."""
        users = self.who_runs(image, [sha])[sha]
        if not users:
            return
        people = ", ".join(mention(user) for user in dict.fromkeys(users))
        with self.store.write(audited=False) as tx:
            self._announce(
                tx,
                image,
                sha,
                f"🖥 Still running `{short(sha)}`: {people} ({len(users)} instance(s)). "
                f"Please recreate them from production: `/nbenv instance {image}`.",
                key=f"op:{operation_id}:instance-owners",
            )

    def _check_versions(self, plan: ops.Plan) -> None:
        """Refuse a plan that would point an environment at a version the registry lacks."""
        if not plan.changes or self.backend is None or not self.backend.mirrors_pointers():
            return
        for sha in dict.fromkeys(change.new for change in plan.changes):
            try:
                self.backend.check_version(plan.image, sha)
            except Refused:
                raise
            except NbenvError as error:
                # The registry is unreachable. A rollback is the emergency exit: the store
                # moves now and the registry follows when it answers again.
                if plan.action != "rollback":
                    raise
                log.warning("rollback of %s without a registry check: %s", plan.image, error)

    def _announce_plan(self, tx: Tx, plan: ops.Plan, text: str, operation_id: str) -> None:
        image = plan.image
        buttons: list[Button] = []
        if plan.action == "promote":
            buttons.append(Button("nbenv_rollback", "Roll back", {"image": image}, "danger"))
        elif plan.action == "publish":
            value = {"image": image, "sha": plan.sha}
            buttons += [
                Button("nbenv_approve", "Approve", value, "primary"),
                Button("nbenv_reject", "Reject", value, "danger"),
            ]
            testers = sorted(self.config.team_roles(image).testers - {EVERYONE})
            if testers:
                text += "\nTesters, please try it: " + " ".join(mention(u) for u in testers)
        self._announce(tx, image, plan.sha, text, key=f"op:{operation_id}", buttons=buttons)
        if plan.revoke:
            self._announce(
                tx,
                image,
                plan.revoke,
                f"⏪ `{short(plan.revoke)}` was rolled back and revoked: it needs fresh approvals "
                "before it can be promoted again.",
                key=f"op:{operation_id}:revoked",
            )

    def _announce(
        self,
        tx: Tx,
        image: str,
        sha: str | None,
        text: str,
        *,
        key: str,
        buttons: list[Button] | None = None,
    ) -> None:
        payload: dict[str, Any] = {"channel": self.config.images[image].channel, "text": text}
        if buttons:
            payload["buttons"] = [
                {
                    "action_id": b.action_id,
                    "text": b.text,
                    "value": json.dumps(b.value),
                    "style": b.style,
                }
                for b in buttons
            ]
        tx.outbox.enqueue(
            f"announce:{key}", "chat.postMessage", payload, thread=(image, sha) if sha else None
        )

    # -- sagas -----------------------------------------------------------------------------

    def finish_operation(self, operation_id: str) -> bool:
        """Bring the remote copies of the pointers in line with the store; idempotent.

        False when a step failed: the operation is then marked failed with the reason
        (shown by `status`, announced in the channel) and `recover` retries it.
        """
        assert self.backend is not None
        with self.store.read() as tx:
            operation = tx.sagas.get(operation_id)
        if operation is None or operation["status"] == "done":
            return True
        image = operation["image"]
        for index, step in enumerate(operation["steps"]):
            if step["done"]:
                continue
            try:
                self._sync_pointer(image, Env(step["env"]))
            except NbenvError as error:
                self._operation_failed(operation, step["env"], error)
                return False
            with self.store.write(audited=False) as tx:
                tx.sagas.complete_step(operation_id, index)
        with self.store.write(audited=False) as tx:
            tx.sagas.finish(operation_id)
        return True

    def _sync_pointer(self, image: str, env: Env, rounds: int = 5) -> None:
        """Make the remote copy of ENV say what the store says *now*.

        The store is the truth: a step never replays the SHA its operation set, so an
        older operation being finished cannot overwrite a newer one. Should the pointer
        move while the remote write is under way, the write is repeated with the new
        value, so the last write always carries the store's latest state.
        """
        assert self.backend is not None
        for _ in range(rounds):
            with self.store.read() as tx:
                before = tx.pointers.state(image).pointer(env)
            self.backend.mirror_pointer(image, env.value, before.sha)
            with self.store.read() as tx:
                if tx.pointers.state(image).pointer(env).generation == before.generation:
                    return
        raise Conflict(f"{image}.{env.value} kept moving while the registry was updated")

    def _operation_failed(self, operation: dict[str, Any], env: str, error: NbenvError) -> None:
        image = operation["image"]
        with self.store.write() as tx:
            tx.sagas.fail(operation["id"], error.message)
            tx.audit.append(
                actor=operation["actor"],
                action="sync",
                image=image,
                sha=tx.pointers.state(image).sha(Env(env)),
                outcome="failed",
                details={"operation": operation["id"], "env": env, "error": error.message},
            )
            self._announce(
                tx,
                image,
                None,
                f"⚠️ The {operation['kind']} of {image} is recorded, but moving the registry "
                f"tag `{env}` failed: {escape(error.message)}. nbenv retries it at its next "
                "start and with `nbenv recover`.",
                key=f"op:{operation['id']}:failed",
            )

    def recover(self) -> list[str]:
        """Finish every operation a crash or a failure left pending; the IDs it finished.

        One that fails again stays failed (with its reason) for the next attempt.
        """
        with self.store.read() as tx:
            pending = [tx.sagas.get(operation_id) for operation_id in tx.sagas.pending()]
        finished = []
        for operation in pending:
            if operation is None or not self.finish_operation(operation["id"]):
                continue
            finished.append(operation["id"])
            with self.store.write() as tx:
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
                    self._announce(
                        tx,
                        operation["image"],
                        None,
                        f"✅ The registry tags of {operation['image']} are in line again "
                        f"(the {operation['kind']} is finished).",
                        key=f"op:{operation['id']}:recovered",
                    )
        return finished

    # -- freezes ---------------------------------------------------------------------------

    def _cmd_freeze(self, actor: str, command: Command, *, key: str | None = None, **_: Any):
        image = command.image
        assert image
        self._require(actor, image, Role.OWNER, "freeze")
        with self._write(key) as tx:
            if tx is None:
                return Reply("already frozen (retried request)")
            current = tx.freezes.get(image)
            if current is not None:
                raise Refused(
                    f"{image} is already frozen by {mention(current.by)}: {escape(current.reason)}"
                )
            tx.freezes.set(image, by=actor, reason=command.reason or "")
            tx.audit.append(
                actor=actor,
                action="freeze",
                image=image,
                sha=None,
                details={"reason": command.reason},
            )
            text = (
                f"🧊 {mention(actor)} froze {image}: {escape(command.reason)}. Promotions and "
                "rollbacks to a chosen SHA are blocked; a rollback to fallback stays allowed."
            )
            self._announce(tx, image, None, text, key=f"freeze:{image}:{tx.now}")
        return Reply(text)

    def _cmd_unfreeze(self, actor: str, command: Command, *, key: str | None = None, **_: Any):
        image = command.image
        assert image
        self._require(actor, image, Role.OWNER, "unfreeze")
        with self._write(key) as tx:
            if tx is None:
                return Reply("already unfrozen (retried request)")
            current = tx.freezes.get(image)
            if current is None:
                raise Refused(f"{image} is not frozen")
            tx.freezes.clear(image)
            tx.audit.append(
                actor=actor,
                action="unfreeze",
                image=image,
                sha=None,
                details={"was": {"reason": current.reason, "by": current.by}},
            )
            text = f"🌤 {mention(actor)} unfroze {image}"
            self._announce(tx, image, None, text, key=f"unfreeze:{image}:{tx.now}")
        return Reply(text)

    # -- slow work: builds and instances go through the job queue ----------------------------

    def _cmd_build(
        self,
        actor: str,
        command: Command,
        *,
        key: str | None = None,
        reply_to: str | None = None,
        **_: Any,
    ):
        image = command.image
        assert image
        self._require(actor, image, Role.OWNER, "build")
        source = self.config.images[image].source
        ref = command.ref or source.staging_branch
        # Full SHAs are commits on every backend (Cloud Build runs the trigger by
        # `commitSha`); anything else is taken as a branch until the backend resolves it.
        will = what_a_build_will_do(
            ref,
            is_branch=not is_full_sha(ref.lower()),
            staging_branch=source.staging_branch,
            production_branch=source.production_branch,
        )
        job_key = key or f"build:{image}:{ref}:{uuid.uuid4()}"
        with self._write(key) as tx:
            if tx is None:
                return Reply("build already queued (retried request)", {"retried": True})
            payload = {"image": image, "ref": ref, "actor": actor}
            self._queue(tx, "build", job_key, payload, reply_to, sha=None, details={"ref": ref})
        return Reply(
            f"🏗 build of {image} at `{escape(ref)}` queued: {will}. Progress will appear "
            f"in the image's channel, one thread per commit",
            {"image": image, "ref": ref, "job": job_key},
        )

    def _cmd_instance(
        self,
        actor: str,
        command: Command,
        *,
        key: str | None = None,
        reply_to: str | None = None,
        **_: Any,
    ):
        image = command.image
        assert image and command.env
        env = command.env
        needed = Role.TESTER if env == Env.STAGING else Role.USER
        self._require(actor, image, needed, f"an instance from {env.value}")
        refusal = self.backend.instance_refusal(actor) if self.backend is not None else None
        if refusal:  # before anything is queued (the job checks again)
            raise Refused(refusal)
        with self._write(key) as tx:
            if tx is None:
                return Reply("instance already requested (retried request)", {"retried": True})
            sha = tx.pointers.state(image).sha(env)
            if sha is None:
                raise Refused(f"{image} has nothing in {env.value}: no instance to create")
            name = command.instance_name or render.instance_name(image, env.value, actor, sha)
            if tx.instances.get(name) is not None:
                raise Refused(f"an instance named {name} already exists")
            job_key = key or f"instance:{name}"
            payload = {"image": image, "env": env.value, "sha": sha, "name": name, "actor": actor}
            if self.run_by_operator:
                payload["operator"] = True
            details = {"env": env.value, "name": name}
            self._queue(tx, "instance", job_key, payload, reply_to, sha=sha, details=details)
        return Reply(
            f"🖥 creating instance `{name}` of {image} from {env.value} (`{short(sha)}`)…",
            {"image": image, "env": env.value, "sha": sha, "name": name, "job": job_key},
        )

    def run_build(self, payload: dict[str, Any]) -> None:
        """Job handler: run the build a `build` command queued.

        A build that could not start (no such branch, the backend refused) or that ran
        and failed is audited as failed, with the reason, and fails its job, so whoever
        asked hears why.
        """
        image, ref, actor = payload["image"], payload["ref"], payload["actor"]
        if self.backend is None:
            raise Refused("no backend is configured to run builds")
        try:
            build = self.backend.run_build(image, ref, actor)
        except NbenvError as error:
            self._audit_failure(actor, "build", image, None, error.message, {"ref": ref})
            raise
        status = build.get("status")
        if status not in FAILED_BUILD_STATUSES:
            return
        failure = build.get("failureInfo")
        detail = failure.get("detail") if isinstance(failure, dict) else None
        substitutions = build.get("substitutions")
        sha = substitutions.get("COMMIT_SHA") if isinstance(substitutions, dict) else None
        sha = sha if isinstance(sha, str) and is_full_sha(sha) else None
        reason = f"{image} at {short(sha) if sha else ref}: {detail or status}"
        details = {"ref": ref, "build_id": build.get("id"), "status": status}
        self._audit_failure(actor, "build", image, sha, reason, details)
        raise Refused(reason)

    def _audit_failure(
        self,
        actor: str,
        action: str,
        image: str,
        sha: str | None,
        reason: str,
        details: dict[str, Any],
    ) -> None:
        with self.store.write() as tx:
            tx.audit.append(
                actor=actor,
                action=action,
                image=image,
                sha=sha,
                outcome="failed",
                details={**details, "reason": to_plain(reason)[:MAX_AUDITED_REASON]},
            )

    def _queue(
        self,
        tx: Tx,
        kind: str,
        job_key: str,
        payload: dict[str, Any],
        reply_to: str | None,
        *,
        sha: str | None,
        details: dict[str, Any],
    ) -> None:
        """Queue slow work with its audit entry; REPLY_TO is where the worker answers."""
        if reply_to:
            payload = {**payload, "response_url": reply_to}
        tx.jobs.enqueue(job_key, kind, payload)
        tx.audit.append(
            actor=payload["actor"], action=kind, image=payload["image"], sha=sha, details=details
        )

    def create_instance(self, payload: dict[str, Any]) -> InstanceInfo:
        """Job handler: start the instance a `instance` command queued, and record it."""
        if self.backend is None:
            raise Refused("no backend is configured to create instances")
        request = InstanceRequest(
            name=payload["name"],
            image=payload["image"],
            env=payload["env"],
            sha=payload["sha"],
            requested_by=payload["actor"],
            for_operator=payload.get("operator") is True,
        )
        with self.store.read() as tx:
            existing = tx.instances.get(request.name)
        if existing is not None:  # a redelivered job: the instance exists already
            return InstanceInfo(
                existing["name"], existing["url"], existing["state"], existing["details"]
            )
        try:
            info = self.backend.start_instance(request)
        except Refused as refusal:  # e.g. not offered to this person (local.shared_instances)
            with self.store.write() as tx:
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
            self._audit_failure(
                request.requested_by, "instance", request.image, request.sha, error.message, details
            )
            raise
        with self.store.write() as tx:
            tx.instances.add(
                name=request.name,
                image=request.image,
                env=request.env,
                sha=request.sha,
                requested_by=request.requested_by,
                backend=self.backend.name,
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
            response_url = payload.get("response_url")
            text = (
                f"🖥 instance `{request.name}` of {request.image} ({request.env}, "
                f"`{short(request.sha)}`) is {info.state}"
                + (f": {info.url}" if info.url else "")
                + (f"\n{escape(str(info.details.get('note')))}" if info.details.get("note") else "")
            )
            if response_url:
                tx.outbox.enqueue(
                    f"instance-ready:{request.name}",
                    "response_url",
                    {
                        "url": response_url,
                        "text": text,
                        "response_type": "ephemeral",
                        "user": request.requested_by,  # told directly if the URL expired
                    },
                )
        return info

    def _cmd_instances(self, actor: str, command: Command, **_: Any) -> Reply:
        images = [command.image] if command.image else self.visible_images(actor)
        for image in images:
            self._require(actor, image, Role.USER, "instances")
        if command.stop:
            return self._stop_instance(actor, command.stop)
        with self.store.read() as tx:
            rows = [row for image in images for row in tx.instances.matching(image=image)]
        shown = [render.instance_listing(row, actor) for row in rows]
        lines = ["*Instances*"] + [render.instance_line(item) for item in shown]
        if not rows:
            lines.append("none")
        return Reply("\n".join(lines), shown)

    def _stop_instance(self, actor: str, name: str) -> Reply:
        with self.store.read() as tx:
            row = tx.instances.get(name)
        if row is None:
            raise BadInput(f"no instance named {name!r}")
        role = self._require(actor, row["image"], Role.USER, "stopping an instance")
        if row["requested_by"] != actor and role < Role.OWNER:
            raise Refused(
                f"{name} belongs to {mention(row['requested_by'])}: only they or an "
                "owner can stop it"
            )
        if self.backend is not None and row["state"] in ("starting", "running"):
            self.backend.stop_instance(name, row["details"])
        with self.store.write() as tx:
            tx.instances.update(name, state="stopped", stopped_at=tx.now)
            tx.audit.append(
                actor=actor,
                action="instance-stop",
                image=row["image"],
                sha=row["sha"],
                details={"name": name},
            )
        return Reply(f"stopped instance `{name}`")

    # -- audit -----------------------------------------------------------------------------

    def verify_audit(self) -> ChainCheck:
        with self.store.read() as tx, closing(tx.audit.chain()) as entries:
            return verify_chain(entries, tx.audit.head(), self.store.audit_key)
