"""Workbench instances: pinned to the SHA tag, labelled, listed by label ("who runs which SHA")."""

from __future__ import annotations

import re

import pytest
from google.cloud import notebooks_v2
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.backends.gcp import GcpBackend
from bot.domain.errors import ConfigError, Refused
from bot.domain.names import Env, Pipeline, image_name_problem
from bot.service.ports import InstanceRequest
from tests.conftest import IMAGE, OWNER, TESTER, USER, sha_of
from tests.gcp.conftest import (
    GOOGLE_ACCOUNTS,
    GPU_IMAGE,
    PASSED,
    REGISTRY,
    release,
    write_config,
)

ZONE = "/v2/projects/nbenv-test/locations/us-central1-a/instances"
SHA = sha_of("pinned")


def _request(
    name: str = "nlp-keras-batch-prod-1", image: str = IMAGE, sha: str = SHA, by: str = USER
):
    return InstanceRequest(name=name, image=image, env="production", sha=sha, requested_by=by)


def load_config_with_idle_timeout(path, idle_timeout):  # type: ignore[no-untyped-def]
    """The config at PATH with IMAGE's idle timeout set as given, unchecked."""
    from bot.config import load_config

    config = load_config(path)
    image = config.images[IMAGE]
    instance = image.instance.model_copy(update={"idle_timeout": idle_timeout})
    images = {**config.images, IMAGE: image.model_copy(update={"instance": instance})}
    return config.model_copy(update={"images": images})


def _backend(path):  # type: ignore[no-untyped-def]
    from bot.backends.gcp import GcpBackend
    from bot.config import load_config

    return GcpBackend(load_config(path))


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
                # Workbench's idle shutdown, at nbenv's documented default of 3 hours.
                "idle-timeout-seconds": "10800",
            },
        },
        "labels": {
            "managed-by": "nbenv",
            "nbenv-image": "nlp_keras-batch",
            "nbenv-env": "production",
            "nbenv-sha": SHA,
            "nbenv-requested-by": USER.lower(),
        },
        "instanceOwners": [GOOGLE_ACCOUNTS[USER]],
    }
    assert info.name == "nlp-keras-batch-prod-1"
    assert info.state == "starting"
    assert info.url == (
        "https://console.cloud.google.com/vertex-ai/workbench/instances/details/"
        "us-central1-a/nlp-keras-batch-prod-1?project=nbenv-test"
    )
    assert info.details["container"] == f"{REGISTRY}/{IMAGE}:{SHA}"
    assert info.details["location"] == "us-central1-a"
    assert info.details["idle_timeout_s"] == 10800
    assert google.idle_shutdown_after("nlp-keras-batch-prod-1") == 10800


@pytest.mark.parametrize(
    ("written", "seconds"), [("90m", 5400), ("1h30m", 5400), ("24h", 86400), ("10m", 600)]
)
def test_the_images_idle_timeout_reaches_workbench_in_seconds(
    google, tmp_path, written: str, seconds: int
) -> None:
    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace(
            "      machine_type: n1-standard-4\n",
            f"      machine_type: n1-standard-4\n      idle_timeout: {written}\n",
        )
    )

    info = _backend(path).start_instance(_request())

    (request,) = google.requests()
    assert request.body["gceSetup"]["metadata"]["idle-timeout-seconds"] == str(seconds)
    assert google.idle_shutdown_after("nlp-keras-batch-prod-1") == seconds
    assert info.details["idle_timeout_s"] == seconds


@pytest.mark.parametrize("never", ["0", "null"])
def test_an_idle_timeout_of_never_asks_workbench_for_no_idle_shutdown(
    google, tmp_path, never: str
) -> None:
    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace(
            "      machine_type: n1-standard-4\n",
            f"      machine_type: n1-standard-4\n      idle_timeout: {never}\n",
        )
    )

    info = _backend(path).start_instance(_request())

    (request,) = google.requests()
    assert "idle-timeout-seconds" not in request.body["gceSetup"]["metadata"]
    assert google.idle_shutdown_after("nlp-keras-batch-prod-1") is None
    assert info.details["idle_timeout_s"] is None


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("5m", "'5m' is out of bounds: between 10m and 24h"),
        ("25h", "'25h' is out of bounds: between 10m and 24h"),
        ("10800", "10800 has no unit: write a duration like 3h, 90m or 1h30m"),
        ("soon", "'soon' is not a duration: write it like 3h, 90m or 1h30m"),
        ("-1h", "'-1h' is not a duration"),
        ("yes", "True has no unit"),
    ],
)
def test_an_invalid_idle_timeout_is_a_config_error_naming_the_key(
    tmp_path, written: str, problem: str
) -> None:
    from bot.config import load_config

    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace(
            "      machine_type: n1-standard-4\n",
            f"      machine_type: n1-standard-4\n      idle_timeout: {written}\n",
        )
    )

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert f"nbenv-gcp.yaml:18: images.{IMAGE}.instance.idle_timeout: {problem}" in str(error.value)
    assert "\n" not in str(error.value)


def test_workbench_refuses_an_idle_timeout_that_is_not_a_number_of_seconds(
    google, tmp_path
) -> None:
    # The config cannot say this (see above); a Config built otherwise could, and then
    # Google's refusal is what the person reads, in one line, and nothing is made.
    config = load_config_with_idle_timeout(write_config(tmp_path), "3h")

    with pytest.raises(Refused) as refused:
        GcpBackend(config).start_instance(_request())

    assert str(refused.value).endswith(
        "HTTP 400: Invalid value for field 'gce_setup.metadata[idle-timeout-seconds]': "
        "'3h': expected an integer number of seconds"
    )
    assert google.instances == {}


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


def test_an_instance_with_a_gpu_gets_the_gpu_driver_and_one_without_asks_for_none(
    backend, google
) -> None:
    backend.start_instance(_request("vision-1", image=GPU_IMAGE))
    backend.start_instance(_request("cpu-1"))

    gpu, cpu = (r.body["gceSetup"] for r in google.requests(method="POST"))
    # gcloud's --install-gpu-driver; unset, Workbench installs no driver and the GPU is idle.
    assert gpu["gpuDriverConfig"] == {"enableGpuDriver": True}
    assert google.gpu_driver_installed("vision-1")
    assert "gpuDriverConfig" not in cpu
    assert not google.gpu_driver_installed("cpu-1")


def test_a_gcp_config_without_a_zone_is_refused_at_start_naming_the_key(tmp_path) -> None:
    from bot.config import load_config

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("  zone: us-central1-a\n", ""))

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert f"images.{IMAGE}.instance.location: required on the gcp backend" in str(error.value)
    assert "no guess" not in str(error.value)


@pytest.mark.parametrize("zone", ["us-east1", "us-east1-a-b", "US-EAST1-B", "zone"])
def test_a_zone_that_is_not_a_zone_is_a_config_error(tmp_path, zone: str) -> None:
    from bot.config import load_config

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("europe-west4-b", zone))

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert f"images.{GPU_IMAGE}.instance.location: {zone!r} is not a Compute Engine zone" in str(
        error.value
    )


def test_instances_live_in_the_configured_zone_never_a_guessed_one(google, tmp_path) -> None:
    # us-east1 has no zone "a": the guess `{region}-a` made every call there fail.
    path = write_config(tmp_path)
    text = path.read_text().replace("region: us-central1", "region: us-east1")
    path.write_text(text.replace("zone: us-central1-a", "zone: us-east1-b"))
    backend = _backend(path)

    info = backend.start_instance(_request())
    listed = backend.instances_by_label(IMAGE)
    backend.stop_instance(info.name, info.details)

    zone = "/v2/projects/nbenv-test/locations/us-east1-b/instances"
    assert [(r.method, r.path, r.status) for r in google.requests()] == [
        ("POST", zone, 200),
        ("GET", zone, 200),
        ("POST", f"{zone}/{info.name}:stop", 200),
    ]
    assert [(i.name, i.location) for i in listed] == [(info.name, "us-east1-b")]


def test_a_zone_google_does_not_have_is_refused_by_google_in_one_line(google, tmp_path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("zone: us-central1-a", "zone: us-east1-a"))

    with pytest.raises(Refused) as refused:
        _backend(path).start_instance(_request())

    assert str(refused.value) == (
        "Notebooks API refused to create instance nlp-keras-batch-prod-1 of nlp.keras-batch "
        f"at {SHA[:7]} (projects/nbenv-test/locations/us-east1-a/instances/"
        "nlp-keras-batch-prod-1): HTTP 400: Invalid value for field 'zone': 'us-east1-a'. "
        "Unknown zone."
    )
    assert google.instances == {}


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

    google.set_instance_state(info.name, "ACTIVE")
    backend.stop_instance(info.name, info.details)
    backend.stop_instance("never-made", {"location": "us-central1-a"})

    # Stopping is a long-running operation: STOPPING (told as stopped) until it ends.
    assert google.instances[info.details["resource"]]["state"] == "STOPPING"
    assert [i.state for i in backend.instances_by_label(IMAGE)] == ["stopped"]
    google.finish_operations()
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
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(gcp_runtime, google, "second")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    reply = gcp_runtime.nbenv.handle(USER, f"instance {IMAGE} --env fallback --name my-fallback")
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

    gcp_runtime.nbenv.handle(TESTER, f"instance {IMAGE} --env staging --name mine")
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


# -- who can open an instance -------------------------------------------------------------------

NOTEBOOK_ACCOUNT = "nbenv-notebook@nbenv-test.iam.gserviceaccount.com"


def test_the_person_who_asked_can_open_their_instance_and_nobody_else(google, tmp_path) -> None:
    from bot.bootstrap import build_runtime

    path = write_config(tmp_path, f"  instance_service_account: {NOTEBOOK_ACCOUNT}\n")
    runtime = build_runtime(str(path), f"sqlite:///{tmp_path / 'nbenv.db'}")
    release(runtime, google, "first")
    # What docs/deploy.md grants the people who get instances: acting as the instances'
    # service account (Workbench's rule for an owner who did not create the instance).
    for account in GOOGLE_ACCOUNTS.values():
        google.grant_service_account_user(NOTEBOOK_ACCOUNT, account)

    runtime.nbenv.handle(TESTER, f"instance {IMAGE} --env staging --name mine")
    runtime.worker.run_until_idle()

    assert google.can_open("mine", GOOGLE_ACCOUNTS[TESTER])
    assert not google.can_open("mine", GOOGLE_ACCOUNTS[USER])
    assert not google.can_open("mine", GOOGLE_ACCOUNTS[OWNER])


def test_a_person_with_no_google_account_is_refused_before_anything_is_queued(
    gcp_runtime, google
) -> None:
    nobody = "U09NOBODY"  # a user of the vision images ("*"), with no Google account mapped

    with pytest.raises(Refused) as refused:
        gcp_runtime.nbenv.handle(nobody, f"instance {GPU_IMAGE}")
    gcp_runtime.worker.run_until_idle()

    assert str(refused.value) == (
        f"no Google account is mapped to {nobody}, and a Workbench instance opens only for "
        "the Google account it is created for: ask whoever runs nbenv to add "
        f"`gcp.google_accounts: {{{nobody}: you@example.com}}` to its config"
    )
    assert google.requests() == []
    with gcp_runtime.store.read() as tx:
        (entry,) = tx.audit.entries(image=GPU_IMAGE)
    assert (entry.actor, entry.action, entry.outcome) == (nobody, "instance", "refused")


def test_the_job_refuses_a_person_with_no_google_account_and_creates_nothing(
    backend, google
) -> None:
    with pytest.raises(Refused) as refused:
        backend.start_instance(_request(by="U09NOBODY"))

    assert str(refused.value).startswith("no Google account is mapped to U09NOBODY")
    assert google.requests() == []


@pytest.mark.parametrize(
    "account", ["alice", "alice@", "@example.com", "alice@example", "a b@example.com"]
)
def test_a_google_account_that_is_not_an_email_is_a_config_error(tmp_path, account) -> None:
    from bot.config import load_config

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("user@example.com", f"'{account}'"))

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert f"gcp.google_accounts.{USER}: {account!r} is not a Google account" in str(error.value)


# -- instance names -----------------------------------------------------------------------------

# The Notebooks API's rule for an instance ID, from the gcloud workbench instances reference:
# 1 to 63 lowercase letters, digits and dashes, starting with a letter, not ending with a dash.
WORKBENCH_INSTANCE_ID = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_SEGMENT = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=24)
# Every valid image name (bot/domain/names.py): segments joined by '.', '_', '__' or '-'s,
# at most 128 characters (a long one cut there, and any separator left at its end dropped).
IMAGE_NAMES = st.builds(
    lambda first, rest: (first + "".join(sep + part for sep, part in rest))[:128].rstrip("._-"),
    _SEGMENT,
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--", "----"]), _SEGMENT), max_size=8),
).filter(lambda name: image_name_problem(name) is None)


@settings(max_examples=200, deadline=None)
@given(
    image=IMAGE_NAMES,
    env=st.sampled_from(list(Env)),
    sha=st.text("0123456789abcdef", min_size=40, max_size=40),
)
def test_every_generated_instance_name_is_one_the_api_accepts(image, env, sha) -> None:
    from bot.service.render import instance_name

    name = instance_name(image, env.value, USER, sha)

    assert WORKBENCH_INSTANCE_ID.fullmatch(name), name
    assert sha[:7] in name


def test_an_image_whose_name_starts_with_a_digit_gets_an_instance(google, tmp_path) -> None:
    from bot.bootstrap import build_runtime

    path = write_config(tmp_path)
    image = "  3d.viz: {team: nlp, channel: C01NLP}\n"
    path.write_text(path.read_text().replace("images:\n", "images:\n" + image))
    runtime = build_runtime(str(path), f"sqlite:///{tmp_path / 'nbenv.db'}")
    sha = sha_of("3d")
    google.push("3d.viz", sha)
    runtime.nbenv.publish(Pipeline("b-3d"), "3d.viz", sha, report=PASSED, branch="staging")

    reply = runtime.nbenv.handle(TESTER, "instance 3d.viz --env staging")
    runtime.worker.run_until_idle()

    name = reply.data["name"]
    assert re.fullmatch(rf"nb-3d-viz-stag-{sha[:7]}-[0-9a-f]{{4}}", name)
    (instance,) = google.instances.values()
    assert instance["name"].endswith(f"/instances/{name}")
    with runtime.store.read() as tx:
        assert tx.instances.get(name)["state"] == "starting"


def test_the_deploy_script_lets_each_mapped_person_open_their_instances() -> None:
    import textwrap

    from tests.gcp import test_deploy as deploy

    config = textwrap.dedent(deploy.CONFIG) + (
        "  google_accounts: {U01OWNER: owner@example.com, U02TESTER: 'tester@example.com'}\n"
    )
    path = deploy.ROOT / "build" / "test-instances" / "nbenv.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config, encoding="utf-8")
    try:
        result = deploy._setup(
            "--config", str(path), "--repository", deploy.REPOSITORY, "--dry-run"
        )
    finally:
        path.unlink()

    assert result.returncode == 0, result.stderr
    grants = {
        (deploy._flag(c, "--member"), deploy._flag(c, "--role"), c[c.index(verb) + 1])
        for c in deploy._gcloud(result.stdout)
        for verb in c
        if verb == "add-iam-policy-binding"
        and (deploy._flag(c, "--member") or "").startswith("user:")
    }
    assert grants == {
        (f"user:{person}", role, target)
        for person in ("owner@example.com", "tester@example.com")
        for role, target in [
            ("roles/iam.serviceAccountUser", deploy.NOTEBOOK),
            ("roles/notebooks.viewer", "my-project"),
        ]
    }


@pytest.mark.parametrize(("count_line", "count"), [("", 0), ("      accelerator_count: 3\n", 3)])
def test_an_accelerator_without_a_usable_count_is_a_config_error(tmp_path, count_line, count):
    from bot.config import load_config

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("      accelerator_count: 1\n", count_line))

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert (
        f"images.{GPU_IMAGE}.instance.accelerator_count: {count} with accelerator_type "
        "NVIDIA_TESLA_T4: give 1, 2, 4 or 8"
    ) in str(error.value)


def test_instances_shows_when_each_running_instance_stops_if_idle(db_url, google, tmp_path) -> None:
    from bot.bootstrap import build_runtime

    path = write_config(tmp_path)
    text = path.read_text().replace(
        "      boot_disk_gb: 200\n", "      boot_disk_gb: 200\n      idle_timeout: 0\n"
    )
    path.write_text(text.replace("testers: [U05VTESTER]", f"testers: [U05VTESTER, {USER}]"))
    runtime = build_runtime(str(path), db_url)
    sha = release(runtime, google, "first")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    google.push(GPU_IMAGE, sha)
    runtime.nbenv.publish(Pipeline("gpu"), GPU_IMAGE, sha, report=PASSED, branch="staging")
    runtime.nbenv.handle(USER, f"instance {IMAGE} --name cheap")
    runtime.nbenv.handle(USER, f"instance {GPU_IMAGE} --env staging --name forever")
    runtime.worker.run_until_idle()

    reply = runtime.nbenv.handle(USER, "instances")

    lines = reply.text.splitlines()
    (cheap,) = [line for line in lines if "`cheap`" in line]
    (forever,) = [line for line in lines if "`forever`" in line]
    assert "starting (stops after 3h idle) by" in cheap
    assert "starting (never stops when idle) by" in forever
    # --json: the same, as data.
    shown = {item["name"]: item for item in reply.data}
    assert shown["cheap"]["idle_timeout_s"] == 10800
    assert shown["cheap"]["idle_stop"] == "stops after 3h idle"
    assert shown["forever"]["idle_timeout_s"] is None
    # A stopped instance costs nothing: no idle stop to announce.
    runtime.nbenv.handle(USER, "instances --stop cheap")
    (cheap,) = [i for i in runtime.nbenv.handle(USER, "instances").data if i["name"] == "cheap"]
    assert "idle_stop" not in cheap
