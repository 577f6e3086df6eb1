"""Artifact Registry: environment tags beside the SHA tags, moved exactly and idempotently."""

from __future__ import annotations

import re

import pytest

from bot.backends.gcp import GcpUnavailable
from bot.backends.gcp.registry import RegistryPath
from bot.domain.errors import ConfigError, Refused
from tests.conftest import IMAGE, sha_of
from tests.gcp.conftest import REGISTRY
from tests.support.fake_google import FakeGoogleApis

PACKAGE = (
    "/v1/projects/nbenv-test/locations/us-central1/repositories/notebooks/packages/nlp.keras-batch"
)
OLD, NEW = sha_of("old"), sha_of("new")


def _version(google: FakeGoogleApis, sha: str) -> str:
    digest = google.tags(IMAGE)[sha]
    return f"{PACKAGE[4:]}/versions/{digest}"


def test_a_missing_tag_is_created_on_the_version_of_the_sha(backend, google) -> None:
    google.push(IMAGE, NEW)

    backend.mirror_pointer(IMAGE, "staging", NEW)

    assert google.env_tags(IMAGE)["staging"] == NEW
    calls = [(r.method, r.path, r.query.get("tagId"), r.body) for r in google.requests()]
    assert calls == [
        ("GET", f"{PACKAGE}/tags/{NEW}", None, None),
        ("GET", f"{PACKAGE}/tags/staging", None, None),
        ("POST", f"{PACKAGE}/tags", "staging", {"version": _version(google, NEW)}),
    ]


def test_an_existing_tag_is_moved_with_an_update_of_its_version_only(backend, google) -> None:
    google.push(IMAGE, OLD)
    google.push(IMAGE, NEW)
    google.set_tag(IMAGE, "production", OLD)

    backend.mirror_pointer(IMAGE, "production", NEW)

    assert google.env_tags(IMAGE)["production"] == NEW
    (patch,) = google.mutations()
    assert (patch.method, patch.path) == ("PATCH", f"{PACKAGE}/tags/production")
    assert patch.query["updateMask"] == "version"
    assert patch.body == {"version": _version(google, NEW)}


def test_moving_a_tag_where_it_already_points_changes_nothing(backend, google) -> None:
    google.push(IMAGE, NEW)
    google.set_tag(IMAGE, "fallback", NEW)

    backend.mirror_pointer(IMAGE, "fallback", NEW)

    assert google.mutations() == []
    assert google.env_tags(IMAGE)["fallback"] == NEW


def test_a_sha_that_was_never_pushed_is_refused_and_no_tag_moves(backend, google) -> None:
    google.push(IMAGE, OLD)
    google.set_tag(IMAGE, "production", OLD)

    with pytest.raises(Refused) as refused:
        backend.mirror_pointer(IMAGE, "production", NEW)

    assert str(refused.value) == (
        f"{IMAGE} `{NEW[:7]}` is not in the registry: {REGISTRY}/{IMAGE} has no tag {NEW} "
        "(was the build pushed?)"
    )
    assert google.mutations() == []
    assert google.env_tags(IMAGE)["production"] == OLD


def test_an_empty_pointer_leaves_the_tag_and_needs_no_delete_permission(backend, google) -> None:
    # The fake grants what the deploy guide grants the bot on the repository,
    # roles/artifactregistry.writer, which has no artifactregistry.tags.delete.
    google.push(IMAGE, OLD)
    google.set_tag(IMAGE, "staging", OLD)

    backend.mirror_pointer(IMAGE, "staging", None)

    assert google.env_tags(IMAGE)["staging"] == OLD
    assert google.requests() == []


def test_the_writer_role_cannot_delete_a_tag(google) -> None:
    """The fake refuses what Google refuses the Writer role (a fake that let every call
    through would not have caught a bot deleting tags)."""
    import urllib.request
    from urllib.error import HTTPError

    google.push(IMAGE, OLD)
    google.set_tag(IMAGE, "staging", OLD)
    request = urllib.request.Request(f"{google.url}{PACKAGE}/tags/staging", method="DELETE")

    with pytest.raises(HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)

    assert refused.value.code == 403
    assert b"artifactregistry.tags.delete" in refused.value.read()
    assert google.env_tags(IMAGE)["staging"] == OLD


def test_a_tag_created_meanwhile_by_another_writer_is_updated_instead(backend, google) -> None:
    google.push(IMAGE, OLD)
    google.push(IMAGE, NEW)
    # Between our read (404) and our create, someone else makes the tag.
    google.on(
        lambda _: google.set_tag(IMAGE, "staging", OLD), when="before", method="POST", path="/tags$"
    )

    backend.mirror_pointer(IMAGE, "staging", NEW)

    assert google.env_tags(IMAGE)["staging"] == NEW
    assert [(r.method, r.status) for r in google.requests(method="POST|PATCH")] == [
        ("POST", 409),
        ("PATCH", 200),
    ]


def test_a_missing_permission_names_it_and_the_role_and_moves_nothing(backend, google) -> None:
    google.push(IMAGE, OLD)
    google.push(IMAGE, NEW)
    google.set_tag(IMAGE, "production", OLD)
    google.deny("artifactregistry.tags.update")

    with pytest.raises(Refused) as refused:
        backend.mirror_pointer(IMAGE, "production", NEW)

    message = str(refused.value)
    assert message.startswith("Artifact Registry denied the bot permission to point tag production")
    assert f"{PACKAGE[4:]}/tags/production" in message
    assert message.endswith(
        "its service account needs artifactregistry.tags.update "
        "(e.g. role roles/artifactregistry.writer)"
    )
    assert google.env_tags(IMAGE)["production"] == OLD
    assert len(google.requests(method="PATCH")) == 1  # a refusal is not retried


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_errors_are_retried_until_the_tag_moves(backend, google, status) -> None:
    google.push(IMAGE, NEW)
    google.fail(status, times=2, method="POST")

    backend.mirror_pointer(IMAGE, "staging", NEW)

    assert google.env_tags(IMAGE)["staging"] == NEW
    assert [r.status for r in google.requests(method="POST")] == [status, status, 200]


def test_a_registry_that_stays_down_gives_a_clear_error_and_changes_nothing(
    backend, google
) -> None:
    google.push(IMAGE, OLD)
    google.push(IMAGE, NEW)
    google.set_tag(IMAGE, "production", OLD)
    google.fail(503, times=None, method="PATCH")

    with pytest.raises(GcpUnavailable) as down:
        backend.mirror_pointer(IMAGE, "production", NEW)

    message = str(down.value)
    assert message.startswith(
        f"Artifact Registry did not point tag production at {NEW[:7]} ({PACKAGE[4:]}/tags/"
        "production): "
    )
    assert "failed, the last with HTTP 503: injected fault" in message
    assert "\n" not in message
    assert len(google.requests(method="PATCH")) > 2
    assert google.env_tags(IMAGE)["production"] == OLD


def test_a_slow_answer_times_out_and_is_retried(backend, google) -> None:
    google.push(IMAGE, NEW)
    google.delay(2.0, times=1, method="GET", path="/tags/staging$")

    backend.mirror_pointer(IMAGE, "staging", NEW)

    assert google.env_tags(IMAGE)["staging"] == NEW
    assert len(google.requests(method="GET", path="/tags/staging$")) == 2


def test_a_registry_that_never_answers_in_time_is_reported_as_a_timeout(backend, google) -> None:
    google.push(IMAGE, NEW)
    google.delay(2.0, times=None, method="GET")

    with pytest.raises(GcpUnavailable) as down:
        backend.mirror_pointer(IMAGE, "staging", NEW)

    assert "the last with no answer in time (timeout)" in str(down.value)
    assert google.mutations() == []


def test_versions_list_digests_times_and_tags_newest_first_across_pages(backend, google) -> None:
    shas = [sha_of(f"v{n}") for n in range(5)]
    digests = [google.push(IMAGE, sha) for sha in shas]
    google.set_tag(IMAGE, "production", shas[3])
    google.set_tag(IMAGE, "fallback", shas[1])

    versions = backend.versions(IMAGE)

    assert [v.digest for v in versions] == digests[::-1]
    assert versions[1].tags == tuple(sorted([shas[3], "production"]))
    assert versions[0].created and versions[0].created > versions[1].created  # type: ignore[operator]
    assert len(google.requests(path="/versions$")) == 3  # five versions, two per page
    assert backend.registry_pointers(IMAGE) == {
        "staging": None,
        "production": shas[3],
        "fallback": shas[1],
    }


def test_an_image_never_pushed_has_no_versions(backend, google) -> None:
    assert backend.versions(IMAGE) == []


def test_registry_paths_are_parsed_and_nested_packages_escaped() -> None:
    path = RegistryPath.parse("europe-west4-docker.pkg.dev/proj/repo/team/sub")

    assert path.repository_name == "projects/proj/locations/europe-west4/repositories/repo"
    assert path.package(IMAGE) == (
        "projects/proj/locations/europe-west4/repositories/repo/packages/"
        "team%2Fsub%2Fnlp.keras-batch"
    )
    assert (
        path.reference(IMAGE, NEW)
        == f"europe-west4-docker.pkg.dev/proj/repo/team/sub/{IMAGE}:{NEW}"
    )


@pytest.mark.parametrize(
    "registry", ["gcr.io/proj/repo", "us-docker.pkg.dev/proj", "", "us-central1-docker.pkg.dev//r"]
)
def test_a_registry_that_is_not_artifact_registry_is_a_config_error(registry) -> None:
    with pytest.raises(ConfigError) as error:
        RegistryPath.parse(registry)
    assert str(error.value).startswith(
        "gcp.registry: expected LOCATION-docker.pkg.dev/PROJECT/REPOSITORY[/PATH], got"
    )


@pytest.fixture
def nested(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """A registry with a folder, `…/notebooks/team`: images are the packages `team/IMAGE`."""
    from bot.backends.gcp import GcpBackend
    from bot.config import load_config
    from tests.gcp.conftest import write_config

    with FakeGoogleApis(registry=f"{REGISTRY}/team") as fake:
        monkeypatch.setenv("NBENV_GCP_ENDPOINT", fake.url)
        path = write_config(tmp_path)
        path.write_text(path.read_text().replace(REGISTRY, f"{REGISTRY}/team"))
        yield fake, GcpBackend(load_config(path))


def test_a_registry_with_a_folder_moves_tags_and_lists_versions(nested) -> None:
    google, backend = nested
    google.push(IMAGE, OLD)
    google.push(IMAGE, NEW)
    google.set_tag(IMAGE, "production", OLD)

    backend.mirror_pointer(IMAGE, "staging", NEW)
    backend.mirror_pointer(IMAGE, "production", NEW)

    assert google.env_tags(IMAGE) == {"staging": NEW, "production": NEW, "fallback": None}
    assert [v.shas for v in backend.versions(IMAGE)] == [[NEW], [OLD]]
    assert backend.registry_pointers(IMAGE) == {
        "staging": NEW,
        "production": NEW,
        "fallback": None,
    }
    # Artifact Registry names the package `team%2Fnlp.keras-batch`; the client library
    # escapes that name once more in the URL.
    nested_package = PACKAGE.replace("/packages/", "/packages/team%2F")
    assert {re.sub("/(tags|versions).*", "", r.path) for r in google.requests()} == {nested_package}
    assert all("/packages/team%252Fnlp.keras-batch/" in r.raw_path for r in google.requests())


def test_a_nested_package_sent_with_a_bare_slash_matches_no_method(nested) -> None:
    """What Google does with a package slash left unescaped: more path segments than the
    `packages/*/tags/*` template has, so no method (404), never another package's tag."""
    import urllib.request
    from urllib.error import HTTPError

    google, _ = nested
    google.push(IMAGE, NEW)
    bare = PACKAGE.replace("/packages/", "/packages/team/")

    with pytest.raises(HTTPError) as missing:
        urllib.request.urlopen(f"{google.url}{bare}/tags/{NEW}", timeout=5)

    assert missing.value.code == 404


def test_a_bad_registry_in_the_config_fails_at_start_naming_file_and_key(tmp_path) -> None:
    from bot.config import load_config
    from tests.gcp.conftest import write_config

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace(REGISTRY, "gcr.io/nbenv-test"))

    with pytest.raises(ConfigError) as error:
        load_config(path)

    line = 1 + path.read_text().splitlines().index("  registry: gcr.io/nbenv-test")
    assert str(error.value) == (
        f"{path}:{line}: gcp.registry: expected LOCATION-docker.pkg.dev/PROJECT/REPOSITORY[/PATH] "
        "(Artifact Registry)"
    )
