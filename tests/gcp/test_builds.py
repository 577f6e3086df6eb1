"""Cloud Build: `build IMAGE [REF]` runs the image's staging trigger, through the job queue."""

from __future__ import annotations

import pytest

from bot.backends.gcp import GcpUnavailable
from bot.domain.errors import BadInput, Refused
from tests.conftest import IMAGE, OWNER, sha_of
from tests.gcp.conftest import GPU_IMAGE

TRIGGER = "/v1/projects/nbenv-test/locations/us-central1/triggers/nlp-staging:run"


def test_a_build_at_a_branch_runs_the_staging_trigger_with_the_image_name(backend, google) -> None:
    build = backend.run_build(IMAGE, "staging", OWNER)

    (request,) = google.requests()
    assert (request.method, request.path) == ("POST", TRIGGER)
    assert request.query.get("name") is None
    # As `gcloud builds triggers run nlp-staging --region=us-central1 --branch=staging`:
    # the trigger's ID in the body, no Cloud Source Repositories project in the source.
    assert request.body == {
        "triggerId": "nlp-staging",
        "source": {"branchName": "staging", "substitutions": {"_IMAGE_NAME": IMAGE}},
    }
    made = google.builds[build["id"]]
    assert build["status"] == "QUEUED"
    assert build["logUrl"] == made["logUrl"]
    assert made["substitutions"]["BRANCH_NAME"] == "staging"
    assert made["substitutions"]["_IMAGE_NAME"] == IMAGE


def test_the_fake_refuses_what_cloud_build_refuses(backend, google) -> None:
    """A request the old code sent (no triggerId, RepoSource.projectId) is a 400."""
    from google.cloud.devtools import cloudbuild_v1

    client = backend.clients.cloud_build()
    name = "projects/nbenv-test/locations/us-central1/triggers/nlp-staging"
    bodies = [
        {"name": name, "source": {"branch_name": "staging"}},
        {"name": name, "trigger_id": "nlp-staging", "source": {"project_id": "nbenv-test"}},
        {"name": name, "trigger_id": "nlp-production", "source": {"branch_name": "staging"}},
    ]
    for body in bodies:
        with pytest.raises(Exception) as refused:
            client.run_build_trigger(request=cloudbuild_v1.RunBuildTriggerRequest(**body))
        assert getattr(refused.value, "code", None) == 400, refused.value
    assert google.builds == {}


def test_builds_look_like_a_github_triggers_and_the_relay_finds_their_commit(
    backend, google
) -> None:
    sha = sha_of("github")
    google.heads["staging"] = sha
    started = backend.run_build(IMAGE, "staging", OWNER)

    build = backend.get_build(started["id"])

    trigger = google.triggers["projects/nbenv-test/locations/us-central1/triggers/nlp-staging"]
    assert build["name"] == (
        f"projects/{google.project_number}/locations/us-central1/builds/{started['id']}"
    )
    assert build["buildTriggerId"] == trigger["id"] != "nlp-staging"
    assert build["source"]["gitSource"]["revision"] == "staging"
    assert build["sourceProvenance"]["resolvedGitSource"]["revision"] == sha
    # Without COMMIT_SHA (a build event that left it out) the commit still is found.
    from bot.builds.events import parse_build

    del build["substitutions"]["COMMIT_SHA"]
    assert parse_build(build).sha == sha


def test_a_build_at_a_commit_sha_pins_the_commit(backend, google) -> None:
    sha = sha_of("pinned")

    build = backend.run_build(IMAGE, sha.upper(), OWNER)

    (request,) = google.requests()
    assert request.body["source"]["commitSha"] == sha
    assert "branchName" not in request.body["source"]
    assert google.builds[build["id"]]["substitutions"]["COMMIT_SHA"] == sha


def test_no_ref_means_the_images_staging_branch(backend, google) -> None:
    backend.run_build(IMAGE, None, OWNER)

    assert google.requests()[0].body["source"]["branchName"] == "staging"


def test_an_image_without_a_trigger_is_refused_before_any_call(backend, google) -> None:
    with pytest.raises(Refused) as refused:
        backend.run_build(GPU_IMAGE, "staging", OWNER)

    assert str(refused.value) == (
        f"no Cloud Build staging trigger is configured for {GPU_IMAGE}: "
        f"set gcp.triggers.{GPU_IMAGE}.staging in the config"
    )
    assert google.requests() == []


@pytest.mark.parametrize("ref", ["main branch", "-rf", "a..b", "x~1", "feature/", ""])
def test_a_malformed_ref_is_bad_input_and_nothing_runs(backend, google, ref) -> None:
    with pytest.raises(BadInput):
        backend.run_build(IMAGE, ref or " ", OWNER)
    assert google.requests() == []


def test_an_unavailable_service_is_retried_and_starts_one_build(backend, google) -> None:
    google.fail(503, times=2)

    backend.run_build(IMAGE, "staging", OWNER)

    assert [r.status for r in google.requests()] == [503, 503, 200]
    assert len(google.builds) == 1


def test_a_server_error_is_not_retried_as_it_may_have_started_a_build(backend, google) -> None:
    google.fail(500)

    with pytest.raises(GcpUnavailable) as down:
        backend.run_build(IMAGE, "staging", OWNER)

    assert str(down.value).endswith("not retried because it may have been carried out")
    assert len(google.requests()) == 1


def test_a_trigger_that_does_not_exist_is_named(backend, google) -> None:
    google.triggers.clear()

    with pytest.raises(Refused) as refused:
        backend.run_build(IMAGE, "staging", OWNER)

    assert str(refused.value) == (
        f"Cloud Build could not run the build trigger of {IMAGE} at staging: "
        "projects/nbenv-test/locations/us-central1/triggers/nlp-staging was not found"
    )


def test_without_permission_the_missing_one_is_named(backend, google) -> None:
    google.deny("cloudbuild.builds.create")

    with pytest.raises(Refused) as refused:
        backend.run_build(IMAGE, "staging", OWNER)

    assert "needs cloudbuild.builds.create (e.g. role roles/cloudbuild.builds.editor)" in str(
        refused.value
    )
    assert google.builds == {}


def test_a_build_reads_back_as_cloud_builds_json(backend, google) -> None:
    started = backend.run_build(IMAGE, "staging", OWNER)

    build = backend.get_build(started["id"])

    assert build["id"] == started["id"]
    assert build["status"] == "QUEUED"
    assert build["substitutions"]["_IMAGE_NAME"] == IMAGE
    assert build["logUrl"].startswith("https://console.cloud.google.com/cloud-build/builds")


def test_build_command_queues_a_job_that_runs_the_trigger(gcp_runtime, google) -> None:
    reply = gcp_runtime.nbenv.handle(OWNER, f"build {IMAGE} release-7")

    assert google.builds == {}  # nothing remote on the request path
    assert gcp_runtime.worker.run_until_idle() == 1
    (build,) = google.builds.values()
    assert build["substitutions"]["BRANCH_NAME"] == "release-7"
    assert reply.data["ref"] == "release-7"
