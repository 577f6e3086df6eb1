"""Notebooks v1 Environments `IMAGE.ENV` (gRPC): the new one exists before the old one goes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.backends.gcp.environments import environment_id
from bot.domain.errors import Refused
from tests.conftest import IMAGE, OWNER, sha_of
from tests.gcp.conftest import REGISTRY, release, write_config
from tests.support.fake_google import FakeLegacyNotebooks

PARENT = "projects/nbenv-test/locations/us-central1-a"
OLD, NEW = sha_of("old"), sha_of("new")


@pytest.fixture
def legacy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLegacyNotebooks]:
    with FakeLegacyNotebooks() as fake:
        monkeypatch.setenv("NBENV_GCP_ENDPOINT_NOTEBOOKS_V1", fake.url)
        yield fake


@pytest.fixture
def mirroring_config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace("gcp:\n", "gcp:\n  mirror_legacy_environments: true\n")
    )
    return path


@pytest.fixture
def mirroring(google, legacy, mirroring_config):  # type: ignore[no-untyped-def]
    from bot.backends.gcp import GcpBackend
    from bot.config import load_config

    google.push(IMAGE, OLD)
    google.push(IMAGE, NEW)
    return GcpBackend(load_config(mirroring_config))


def _environments(legacy: FakeLegacyNotebooks) -> dict[str, list[tuple[str, str]]]:
    return {
        display: [(e.name.rsplit("/", 1)[-1], e.container_image.tag) for e in found]
        for display, found in legacy.by_display_name().items()
    }


def test_the_first_mirror_creates_the_environment_pinned_to_the_sha(mirroring, legacy) -> None:
    mirroring.mirror_pointer(IMAGE, "production", OLD)

    (environment,) = legacy.environments.values()
    assert environment.name == f"{PARENT}/environments/nlp-keras-batch-production-{OLD[:12]}"
    assert environment.display_name == f"{IMAGE}.production"
    assert environment.container_image.repository == f"{REGISTRY}/{IMAGE}"
    assert environment.container_image.tag == OLD


def test_moving_creates_the_new_environment_before_deleting_the_old(mirroring, legacy) -> None:
    mirroring.mirror_pointer(IMAGE, "production", OLD)
    legacy.calls.clear()

    mirroring.mirror_pointer(IMAGE, "production", NEW)

    assert [method for method, _ in legacy.calls] == [
        "ListEnvironments",
        "CreateEnvironment",
        "DeleteEnvironment",
    ]
    assert legacy.calls[1][1]["environmentId"] == f"nlp-keras-batch-production-{NEW[:12]}"
    assert legacy.calls[2][1]["name"].endswith(f"production-{OLD[:12]}")
    assert _environments(legacy) == {
        f"{IMAGE}.production": [(f"nlp-keras-batch-production-{NEW[:12]}", NEW)]
    }


def test_mirroring_again_changes_nothing(mirroring, legacy) -> None:
    mirroring.mirror_pointer(IMAGE, "staging", NEW)
    legacy.calls.clear()

    mirroring.mirror_pointer(IMAGE, "staging", NEW)

    assert [method for method, _ in legacy.calls] == ["ListEnvironments"]


def test_a_refused_create_keeps_the_old_environment(mirroring, legacy, google) -> None:
    mirroring.mirror_pointer(IMAGE, "production", OLD)
    legacy.fail("PERMISSION_DENIED", method="CreateEnvironment")

    with pytest.raises(Refused) as refused:
        mirroring.mirror_pointer(IMAGE, "production", NEW)

    assert "needs notebooks.environments.create (e.g. role roles/notebooks.admin)" in str(
        refused.value
    )
    assert _environments(legacy) == {
        f"{IMAGE}.production": [(f"nlp-keras-batch-production-{OLD[:12]}", OLD)]
    }


def test_an_unavailable_service_is_retried(mirroring, legacy) -> None:
    legacy.fail("UNAVAILABLE", method="CreateEnvironment", times=2)

    mirroring.mirror_pointer(IMAGE, "fallback", OLD)

    assert [m for m, _ in legacy.calls].count("CreateEnvironment") == 3
    assert _environments(legacy) == {
        f"{IMAGE}.fallback": [(f"nlp-keras-batch-fallback-{OLD[:12]}", OLD)]
    }


def test_environment_ids_are_valid_whatever_the_image_name() -> None:
    assert (
        environment_id("9lives__x.y--z", "production", NEW)
        == f"nb-9lives-x-y-z-production-{NEW[:12]}"
    )
    long = environment_id("a" * 128, "production", NEW)
    assert len(long) == 63 and long.endswith(f"-production-{NEW[:12]}")


def test_a_promotion_moves_tags_and_environments_together(
    sqlite_url, mirroring_config, google, legacy
) -> None:
    from bot.bootstrap import build_runtime

    runtime = build_runtime(str(mirroring_config), sqlite_url)
    first = release(runtime, google, "first")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(runtime, google, "second")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    assert google.env_tags(IMAGE) == {"staging": second, "production": second, "fallback": first}
    found = _environments(legacy)
    assert {display: [tag for _, tag in envs] for display, envs in found.items()} == {
        f"{IMAGE}.staging": [second],
        f"{IMAGE}.production": [second],
        f"{IMAGE}.fallback": [first],
    }


def test_the_mirror_is_off_unless_asked_for(backend, google) -> None:
    from bot.config import Gcp

    google.push(IMAGE, NEW)

    backend.mirror_pointer(IMAGE, "production", NEW)  # no v1 endpoint: any call would fail

    assert Gcp.model_fields["mirror_legacy_environments"].default is False
    assert google.env_tags(IMAGE)["production"] == NEW


def test_turning_it_on_warns_that_it_is_a_legacy(google, legacy, mirroring_config, caplog) -> None:
    from bot.backends.gcp import GcpBackend
    from bot.config import load_config

    with caplog.at_level("WARNING", logger="bot.backends.gcp.backend"):
        GcpBackend(load_config(mirroring_config))

    (warning,) = [r.getMessage() for r in caplog.records if r.name == "bot.backends.gcp.backend"]
    assert "gcp.mirror_legacy_environments is on" in warning
    assert "user-managed notebooks, which Google no longer supports" in warning


def test_a_create_refused_for_end_of_support_says_how_to_turn_the_mirror_off(
    mirroring, legacy, google
) -> None:
    mirroring.mirror_pointer(IMAGE, "production", OLD)
    legacy.end_of_support = True

    with pytest.raises(Refused) as refused:
        mirroring.mirror_pointer(IMAGE, "production", NEW)

    message = str(refused.value)
    assert message.startswith(
        f"Notebooks API (v1) refused to create environment {IMAGE}.production at {NEW[:7]} "
        f"({PARENT}/environments/nlp-keras-batch-production-{NEW[:12]}): Vertex AI Workbench "
        "user-managed notebooks have been deprecated"
    )
    assert message.endswith(
        "set gcp.mirror_legacy_environments: false to stop mirroring them (the registry tags "
        "are moved regardless)"
    )
    assert "\n" not in message
    # The registry tag moved first; the old environment is kept, nothing half-done.
    assert google.env_tags(IMAGE)["production"] == NEW
    assert _environments(legacy) == {
        f"{IMAGE}.production": [(f"nlp-keras-batch-production-{OLD[:12]}", OLD)]
    }
    assert [m for m, _ in legacy.calls].count("CreateEnvironment") == 2  # not retried
