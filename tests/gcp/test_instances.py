"""Workbench instances: pinned to the SHA tag, labelled, listed by label ("who runs which SHA")."""

from __future__ import annotations

import pytest
from google.cloud import notebooks_v2

from bot.domain.errors import ConfigError, Refused
from bot.service.ports import InstanceRequest
from tests.conftest import IMAGE, OWNER, TESTER, USER, sha_of
from tests.gcp.conftest import GPU_IMAGE, REGISTRY, release, write_config

ZONE = "/v2/projects/nbenv-test/locations/us-central1-a/instances"
SHA = sha_of("pinned")


def _request(name: str = "nlp-keras-batch-prod-1", image: str = IMAGE, sha: str = SHA):
    return InstanceRequest(name=name, image=image, env="production", sha=sha, requested_by=USER)


def test_an_instance_runs_the_sha_tag_with_the_images_defaults_and_labels(backend, google) -> None:
    info = backend.start_instance(_request())

    (request,) = google.requests()
    assert (request.method, request.path) == ("POST", ZONE)
    assert request.query["instanceId"] == "nlp-keras-batch-prod-1"
    assert request.body == {
        "gceSetup": {
            "machineType": "n1-standard-4",
            "containerImage": {"repository": f"{REGISTRY}/{IMAGE}", "tag": SHA},
            "bootDisk": {"diskSizeGb": "150"},
            "metadata": {
                "nbenv-image": IMAGE,
                "nbenv-env": "production",
                "nbenv-sha": SHA,
                "nbenv-requested-by": USER,
            },
        },
        "labels": {
            "managed-by": "nbenv",
            "nbenv-image": "nlp_keras-batch",
            "nbenv-env": "production",
            "nbenv-sha": SHA,
            "nbenv-requested-by": USER.lower(),
        },
    }
    assert info.name == "nlp-keras-batch-prod-1"
    assert info.state == "starting"
    assert info.url == (
        "https://console.cloud.google.com/vertex-ai/workbench/instances/details/"
        "us-central1-a/nlp-keras-batch-prod-1?project=nbenv-test"
    )
    assert info.details["container"] == f"{REGISTRY}/{IMAGE}:{SHA}"
    assert info.details["location"] == "us-central1-a"


def test_an_accelerator_and_zone_come_from_the_images_config(backend, google) -> None:
    backend.start_instance(_request("vision-1", image=GPU_IMAGE))

    (request,) = google.requests()
    assert request.path == "/v2/projects/nbenv-test/locations/europe-west4-b/instances"
    setup = request.body["gceSetup"]
    assert setup["machineType"] == "n1-standard-8"
    # The REST transport sends enums as numbers ($alt=json;enum-encoding=int).
    t4 = notebooks_v2.AcceleratorConfig.AcceleratorType.NVIDIA_TESLA_T4.value
    assert request.query["$alt"] == "json;enum-encoding=int"
    assert setup["acceleratorConfigs"] == [{"type": t4, "coreCount": "1"}]
    assert setup["bootDisk"] == {"diskSizeGb": "200"}


def test_an_unknown_accelerator_is_a_config_error_naming_the_key(google, tmp_path) -> None:
    from bot.backends.gcp import GcpBackend
    from bot.config import load_config

    text = write_config(tmp_path).read_text().replace("NVIDIA_TESLA_T4", "NVIDIA_TESLA_K9000")
    (tmp_path / "bad.yaml").write_text(text)
    backend = GcpBackend(load_config(tmp_path / "bad.yaml"))

    with pytest.raises(ConfigError) as error:
        backend.start_instance(_request("vision-1", image=GPU_IMAGE))

    assert str(error.value).startswith(
        f"images.{GPU_IMAGE}.instance.accelerator_type: 'NVIDIA_TESLA_K9000' is not a "
        "Workbench accelerator (one of NVIDIA_TESLA_P100,"
    )
    assert google.requests() == []


def test_a_retried_create_of_our_own_instance_answers_with_it(backend, google) -> None:
    backend.start_instance(_request())
    google.set_instance_state("nlp-keras-batch-prod-1", "ACTIVE", proxy_uri="abc.notebooks.example")

    again = backend.start_instance(_request())

    assert again.state == "running"
    assert again.url == "https://abc.notebooks.example"
    assert len(google.instances) == 1


def test_a_name_taken_by_another_instance_is_refused(backend, google) -> None:
    backend.start_instance(_request(sha=sha_of("other")))

    with pytest.raises(Refused) as refused:
        backend.start_instance(_request())

    assert str(refused.value) == (
        "an instance named nlp-keras-batch-prod-1 already exists in us-central1-a "
        "and runs something else: choose another --name"
    )


def test_without_permission_to_create_the_permission_is_named(backend, google) -> None:
    google.deny("notebooks.instances.create")

    with pytest.raises(Refused) as refused:
        backend.start_instance(_request())

    assert str(refused.value).endswith(
        "its service account needs notebooks.instances.create (e.g. role roles/notebooks.admin)"
    )
    assert google.instances == {}


def test_who_runs_which_sha_is_answered_from_the_labels_across_pages(backend, google) -> None:
    other = sha_of("other")
    backend.start_instance(_request("a-1"))
    backend.start_instance(_request("a-2", sha=other))
    backend.start_instance(_request("a-3"))
    # An instance nbenv did not make is not reported, whatever it runs.
    google.instances["projects/nbenv-test/locations/us-central1-a/instances/hand-made"] = {
        "name": "projects/nbenv-test/locations/us-central1-a/instances/hand-made",
        "state": "ACTIVE",
        "gceSetup": {"containerImage": {"repository": f"{REGISTRY}/{IMAGE}", "tag": SHA}},
        "labels": {"nbenv-sha": SHA},
    }
    google.set_instance_state("a-1", "ACTIVE", proxy_uri="a1.notebooks.example")

    running = backend.instances_by_label(IMAGE, SHA)

    assert [(i.name, i.sha, i.requested_by, i.state) for i in running] == [
        ("a-1", SHA, USER, "running"),
        ("a-3", SHA, USER, "starting"),
    ]
    assert running[0].url == "https://a1.notebooks.example"
    assert len(google.requests(method="GET", path="/instances$")) == 2  # four, two per page


def test_stopping_stops_the_vm_and_a_gone_instance_is_not_an_error(backend, google) -> None:
    info = backend.start_instance(_request())

    backend.stop_instance(info.name, info.details)
    backend.stop_instance("never-made", {"location": "us-central1-a"})

    assert google.instances[info.details["resource"]]["state"] == "STOPPED"
    assert [
        (r.method, r.path, r.status) for r in google.requests(method="POST", path=":stop$")
    ] == [
        ("POST", f"{ZONE}/nlp-keras-batch-prod-1:stop", 200),
        ("POST", f"{ZONE}/never-made:stop", 404),
    ]


def test_an_instance_from_fallback_is_pinned_to_fallbacks_sha_and_recorded(
    gcp_runtime, google
) -> None:
    first = release(gcp_runtime, google, "first")
    gcp_runtime.app.handle(OWNER, f"promote {IMAGE}")
    second = release(gcp_runtime, google, "second")
    gcp_runtime.app.handle(OWNER, f"promote {IMAGE}")

    reply = gcp_runtime.app.handle(USER, f"instance {IMAGE} --env fallback --name my-fallback")
    assert google.instances == {}  # created by the job, off the request path
    gcp_runtime.worker.run_until_idle()

    (instance,) = google.instances.values()
    assert instance["gceSetup"]["containerImage"] == {
        "repository": f"{REGISTRY}/{IMAGE}",
        "tag": first,
    }
    assert instance["labels"]["nbenv-env"] == "fallback"
    assert reply.data["sha"] == first != second
    with gcp_runtime.store.read() as tx:
        row = tx.instances.get("my-fallback")
    assert (row["sha"], row["backend"], row["state"]) == (first, "gcp", "starting")


def test_a_refused_create_leaves_no_instance_recorded(gcp_runtime, google) -> None:
    release(gcp_runtime, google, "first")
    google.deny("notebooks.instances.create")

    gcp_runtime.app.handle(TESTER, f"instance {IMAGE} --env staging --name mine")
    gcp_runtime.worker.run_until_idle()

    with gcp_runtime.store.read() as tx:
        assert tx.instances.get("mine") is None
    assert google.instances == {}


def test_instances_run_as_the_configured_service_account(google, tmp_path) -> None:
    from bot.backends.gcp import GcpBackend
    from bot.config import load_config

    account = "nbenv-notebook@nbenv-test.iam.gserviceaccount.com"
    path = write_config(tmp_path, f"  instance_service_account: {account}\n")
    backend = GcpBackend(load_config(path))

    backend.start_instance(_request())

    (request,) = google.requests()
    assert request.body["gceSetup"]["serviceAccounts"] == [{"email": account}]
