"""Cloud Build: run an image's trigger at a branch or SHA, and read builds back.

Build progress reaches Slack through the `cloud-builds` topic and the relay; here we
only start builds and answer questions about them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bot.backends.gcp.clients import Caller, Clients, Op
from bot.config import Gcp
from bot.domain.errors import BadInput, Refused
from bot.domain.names import is_full_sha

SERVICE = "Cloud Build"
# What `git check-ref-format --branch` would refuse, in short: no spaces, controls, or
# the characters git reserves; no `..`, no leading dash.
_BAD_REF = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]|\.\.|^-|@\{|/$|\.lock$|^$")


def check_ref(ref: str) -> str:
    if _BAD_REF.search(ref) or len(ref) > 255:
        raise BadInput(f"{ref!r} is not a branch name or commit SHA")
    return ref


class CloudBuild:
    def __init__(self, gcp: Gcp, clients: Clients, caller: Caller) -> None:
        self.gcp = gcp
        self.clients = clients
        self.caller = caller

    def trigger_name(self, image: str, which: str = "staging") -> str:
        triggers = self.gcp.triggers.get(image)
        trigger = getattr(triggers, which, None) if triggers else None
        if not trigger:
            raise Refused(
                f"no Cloud Build {which} trigger is configured for {image}: "
                f"set gcp.triggers.{image}.{which} in the config"
            )
        if "/" in trigger:  # already a full resource name
            return trigger
        return f"projects/{self.gcp.project}/locations/{self.gcp.region}/triggers/{trigger}"

    def run_trigger(self, image: str, ref: str, requested_by: str) -> dict[str, Any]:
        """Start the staging trigger of IMAGE at REF (branch, or a full commit SHA)."""
        from google.cloud.devtools import cloudbuild_v1

        check_ref(ref)
        name = self.trigger_name(image)
        sha = ref.lower() if is_full_sha(ref.lower()) else None
        # No `RepoSource.projectId`: it names a Cloud Source Repositories project, which
        # means nothing to a GitHub trigger (cloudbuild_v1/types/cloudbuild.py, RepoSource).
        source = cloudbuild_v1.RepoSource(
            substitutions={"_IMAGE_NAME": image},
            **({"commit_sha": sha} if sha else {"branch_name": ref}),
        )
        # The resource name and `triggerId` (the proto marks it required), as
        # `gcloud builds triggers run` sends them (surface/builds/triggers/run.py:
        # `RunBuildTriggerRequest(triggerId=trigger)` under the regional name). Not
        # `projectId`: with it the REST transport would pick the global
        # `/v1/projects/{project_id}/triggers/{trigger_id}:run`, which does not know
        # regional triggers (cloud.google.com/build/docs/api/reference/rest/v1/
        # projects.locations.triggers/run).
        request = cloudbuild_v1.RunBuildTriggerRequest(
            name=name, trigger_id=name.rsplit("/", 1)[-1], source=source
        )
        client = self.clients.cloud_build()
        operation = self.caller.call(
            Op(
                SERVICE,
                f"run the build trigger of {image} at {ref}",
                name,
                "cloudbuild.builds.create",
                "roles/cloudbuild.builds.editor",
            ),
            client.run_build_trigger,
            request=request,
            idempotent=False,  # a retry after a lost answer would start a second build
        )
        build = operation.metadata.build if operation.metadata else None
        return {
            "id": build.id if build else None,
            "status": build.status.name if build else "QUEUED",
            "logUrl": build.log_url if build else None,
            "trigger": name,
            "image": image,
            "ref": ref,
            "requested_by": requested_by,
        }

    def get_build(self, build_id: str) -> dict[str, Any]:
        """A build as Cloud Build's JSON (the shape the relay receives from Pub/Sub)."""
        from google.cloud.devtools import cloudbuild_v1
        from google.protobuf import json_format

        if not re.fullmatch(r"[0-9a-zA-Z-]{1,64}", build_id):
            raise BadInput(f"{build_id!r} is not a Cloud Build ID")
        name = f"projects/{self.gcp.project}/locations/{self.gcp.region}/builds/{build_id}"
        client = self.clients.cloud_build()
        build = self.caller.call(
            Op(
                SERVICE,
                f"read build {build_id}",
                name,
                "cloudbuild.builds.get",
                "roles/cloudbuild.builds.viewer",
            ),
            client.get_build,
            request=cloudbuild_v1.GetBuildRequest(name=name),
        )
        return json.loads(json_format.MessageToJson(cloudbuild_v1.Build.pb(build)))
