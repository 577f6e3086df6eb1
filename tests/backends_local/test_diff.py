"""`nbenv diff`: base image, declared dependencies and installed packages between versions."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.backends.local.git import GitSource
from bot.config import Config, load_config
from bot.domain.diff import (
    compare_manifests,
    declared_dependencies,
    diff_image,
    dockerfile_bases,
    dockerfile_installs,
    requirements,
)
from bot.service.diff import Differ
from tests.backends_local.conftest import local_config_text
from tests.conftest import IMAGE, OWNER, TESTER, USER
from tests.support.gitrepo import BASE_NEW, BASE_OLD, ImageRepo


def report(python: str, *packages: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    items = []
    for package in packages:
        item = {"name": package[0], "version": package[1]}
        if len(package) == 3:
            item["source"] = package[2]
        items.append(item)
    return {"python": python, "packages": items, "notebooks": []}


OLD_REPORT = report(
    "3.10.13",
    ("numpy", "1.26.4"),
    ("nltk", "3.8.1"),
    ("sentencepiece", "0.1.99"),
    ("regex", "2023.12.25"),
    ("tensorflow", "2.14.1"),
    ("libgcc-ng", "13.2.0", "conda"),
)
NEW_REPORT = report(
    "3.10.14",
    ("numpy", "1.26.4"),
    ("nltk", "3.9.1"),
    ("regex", "2023.10.3"),
    ("tensorflow", "2.15.0"),
    ("rich", "13.7.1"),
    ("PyYAML", "6.0.1"),
    ("libgcc-ng", "13.2.0_1", "conda"),
)


def by_name(changes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {change["name"]: change for change in changes}


# -- on real commits -------------------------------------------------------------------------


def test_diff_between_real_commits_names_base_image_and_every_package_change(
    repo: ImageRepo, local_config: Config
) -> None:
    differ = Differ(GitSource(local_config))

    data = differ(IMAGE, repo.sha("initial"), repo.sha("upgrade"), OLD_REPORT, NEW_REPORT)

    assert data["base_image"] == {"old": [BASE_OLD], "new": [BASE_NEW], "changed": True}
    declared = by_name(data["declared"])
    assert declared["nltk"]["kind"] == "upgraded"
    assert (declared["nltk"]["old"], declared["nltk"]["new"]) == ("==3.8.1", "==3.9.1")
    assert declared["sentencepiece"]["kind"] == "removed"
    assert declared["rich"]["kind"] == "added"
    # A pip install line of the Dockerfile is a declaration too.
    assert declared["pyyaml"] == {
        "name": "pyyaml",
        "kind": "added",
        "old": None,
        "new": "==6.0.1",
        "source": "Dockerfile (pip install)",
    }
    assert "regex" not in declared  # unchanged
    packages = by_name(data["packages"])
    assert packages["nltk"]["kind"] == "upgraded"
    assert packages["tensorflow"]["kind"] == "upgraded"
    assert packages["regex"]["kind"] == "downgraded"
    assert packages["rich"]["kind"] == "added"
    assert packages["pyyaml"]["kind"] == "added"
    assert packages["sentencepiece"]["kind"] == "removed"
    assert "numpy" not in packages
    # conda's build suffix is no PEP 440 version: reported as changed, not ordered.
    assert packages["libgcc-ng"]["kind"] == "changed"
    assert packages["libgcc-ng"]["source"] == "conda"
    assert data["python"] == {"old": "3.10.13", "new": "3.10.14"}

    text = data["text"]
    assert f"`{repo.sha('initial')[:7]}` → `{repo.sha('upgrade')[:7]}`" in text
    assert "Base image (us-docker.pkg.dev/deeplearning-platform-release/gcr.io/…)" in text
    assert "`tf2-cpu.2-14.py310` → `tf2-cpu.2-15.py310`" in text
    assert "↑`nltk` ==3.8.1 → ==3.9.1" in text
    assert "−`sentencepiece==0.1.99`" in text
    assert "+`rich==13.7.1`" in text
    assert "Installed packages: 2 upgraded, 1 downgraded, 2 added, 1 removed, 1 changed" in text
    assert "`regex` 2023.12.25 → 2023.10.3" in text
    assert "Python 3.10.13 → 3.10.14" in text


def test_diff_the_other_way_reports_downgrades(repo: ImageRepo, local_config: Config) -> None:
    data = Differ(GitSource(local_config))(
        IMAGE, repo.sha("upgrade"), repo.sha("initial"), NEW_REPORT, OLD_REPORT
    )

    declared = by_name(data["declared"])
    assert declared["nltk"]["kind"] == "downgraded"
    assert declared["sentencepiece"]["kind"] == "added"
    assert declared["rich"]["kind"] == "removed"
    assert by_name(data["packages"])["tensorflow"]["kind"] == "downgraded"
    assert "↓`nltk` ==3.9.1 → ==3.8.1" in data["text"]


def test_a_commit_that_only_touches_tests_has_no_dependency_changes(
    repo: ImageRepo, local_config: Config
) -> None:
    data = Differ(GitSource(local_config))(
        IMAGE, repo.sha("upgrade"), repo.sha("break"), NEW_REPORT, NEW_REPORT
    )

    assert data["declared"] == []
    assert data["packages"] == []
    assert data["base_image"]["changed"] is False
    assert "Base image unchanged: `" + BASE_NEW + "`" in data["text"]
    assert "Declared dependencies unchanged" in data["text"]
    assert "Installed packages: no changes" in data["text"]


def test_without_manifests_the_declared_changes_still_show(
    repo: ImageRepo, local_config: Config
) -> None:
    data = Differ(GitSource(local_config))(
        IMAGE, repo.sha("initial"), repo.sha("upgrade"), OLD_REPORT, None
    )

    assert data["packages"] is None
    assert by_name(data["declared"])["nltk"]["kind"] == "upgraded"
    assert f"no package manifest for `{repo.sha('upgrade')[:7]}`" in data["text"]


def test_without_the_repository_the_manifests_still_compare(tmp_path: Path) -> None:
    config_file = tmp_path / "missing.yaml"
    config_file.write_text(local_config_text(tmp_path / "no-such-repo"), encoding="utf-8")
    differ = Differ(GitSource(load_config(config_file)))
    old, new = "a" * 40, "b" * 40

    data = differ(IMAGE, old, new, OLD_REPORT, NEW_REPORT)

    assert data["declared"] is None
    assert data["base_image"] == {"old": None, "new": None, "changed": False}
    assert by_name(data["packages"])["nltk"]["kind"] == "upgraded"
    assert "declared dependencies not compared: git repository" in data["text"]
    assert "not found" in data["text"]


def test_a_sha_the_repository_lacks_is_a_note_not_an_error(
    repo: ImageRepo, local_config: Config
) -> None:
    data = Differ(GitSource(local_config))(
        IMAGE, "c" * 40, repo.sha("upgrade"), OLD_REPORT, NEW_REPORT
    )

    assert data["declared"] is None
    assert f"commit {'c' * 7} is not in {repo.path}" in data["text"]
    assert data["packages"]


def test_same_or_missing_sides(repo: ImageRepo, local_config: Config) -> None:
    differ = Differ(GitSource(local_config))
    sha = repo.sha("upgrade")

    assert "nothing differs" in differ(IMAGE, sha, sha, NEW_REPORT, NEW_REPORT)["text"]
    assert "it would be the first" in differ(IMAGE, None, sha, None, NEW_REPORT)["text"]
    assert "nothing to compare" in differ(IMAGE, None, None, None, None)["text"]


def test_long_lists_are_cut_short() -> None:
    old = report("3.10.0", *[(f"pkg{i:02d}", "1.0") for i in range(20)])
    new = report("3.10.0", *[(f"pkg{i:02d}", "2.0") for i in range(20)])

    text = Differ(None)(IMAGE, "a" * 40, "b" * 40, old, new)["text"]

    assert "Installed packages: 20 upgraded" in text
    assert "and 12 more" in text
    assert "pkg19" not in text
    assert "no git repository configured" in text


def test_package_names_from_files_cannot_mention_anyone() -> None:
    old = report("3.10.0")
    new = {"python": "3.10.0", "packages": [{"name": "<!channel>", "version": "1"}]}

    text = Differ(None)(IMAGE, "a" * 40, "b" * 40, old, new)["text"]

    assert "<!channel>" not in text
    assert "&lt;!channel&gt;" in text


# -- through the service: `nbenv diff` and the promote confirmation --------------------------


@pytest.fixture
def diff_runtime(local_config_file: Path, db_url: str):  # type: ignore[no-untyped-def]
    from bot.bootstrap import build_runtime

    return build_runtime(str(local_config_file), db_url)


def test_nbenv_diff_defaults_to_production_against_staging(
    diff_runtime: Any, repo: ImageRepo
) -> None:
    app = diff_runtime.nbenv
    app.publish(OWNER, IMAGE, repo.sha("initial"), report=OLD_REPORT)
    # Production gets the initial version through the real promote path.
    app.handle(TESTER, f"approve {IMAGE}")
    app.handle(OWNER, f"promote {IMAGE}")
    app.publish(OWNER, IMAGE, repo.sha("upgrade"), report=NEW_REPORT)

    reply = app.handle(USER, f"diff {IMAGE}")

    assert reply.data["from"] == repo.sha("initial")
    assert reply.data["to"] == repo.sha("upgrade")
    assert "`tf2-cpu.2-14.py310` → `tf2-cpu.2-15.py310`" in reply.text
    assert "↑`nltk` ==3.8.1 → ==3.9.1" in reply.text

    # Short SHAs, the other way round.
    back = app.handle(USER, f"diff {IMAGE} {repo.sha('upgrade')[:8]} {repo.sha('initial')[:8]}")
    assert "↓`nltk` ==3.9.1 → ==3.8.1" in back.text

    # The promote confirmation shows the same diff.
    app.handle(TESTER, f"approve {IMAGE}")
    preview = app.handle(OWNER, f"promote {IMAGE} --dry-run")
    assert "`tf2-cpu.2-14.py310` → `tf2-cpu.2-15.py310`" in preview.text
    assert preview.data["diff"]["base_image"]["changed"] is True


def test_dependency_parsing_reads_what_people_write() -> None:
    dockerfile = textwrap.dedent(
        """\
        # syntax=docker/dockerfile:1
        ARG BASE=us-docker.pkg.dev/deeplearning-platform-release/gcr.io/base-cpu.py310
        FROM --platform=linux/amd64 ${BASE} AS builder
        RUN pip wheel -w /wheels sentencepiece
        FROM builder
        RUN python3 -m pip install --no-cache-dir -U \\
              "numpy>=1.26,<2" \\
              -r /tmp/requirements.txt \\
              --extra-index-url https://example.com/simple \\
              ./local-package /wheels/x.whl \\
         && conda install -y -c conda-forge libsndfile=1.2.2 conda-forge::ffmpeg \\
         && echo done; mamba install --yes cudatoolkit==11.8
        """
    )

    assert dockerfile_bases(dockerfile) == (
        "us-docker.pkg.dev/deeplearning-platform-release/gcr.io/base-cpu.py310",
    )
    installs = {item.name: item for item in dockerfile_installs(dockerfile)}
    assert set(installs) == {"numpy", "libsndfile", "ffmpeg", "cudatoolkit"}
    assert installs["numpy"].spec == "<2,>=1.26"
    assert installs["libsndfile"].spec == "=1.2.2"
    assert installs["libsndfile"].pinned == "1.2.2"
    assert installs["cudatoolkit"].source == "Dockerfile (conda install)"

    parsed = requirements(
        textwrap.dedent(
            """\
            --index-url https://example.com/simple
            -r base.txt
            Scikit_Learn==1.4.2  # a comment
            torch==2.2.1 --hash=sha256:0123456789abcdef
            tomli>=2 ; python_version < "3.11"
            mypkg @ https://example.com/mypkg-1.0.tar.gz
            """
        )
    )
    assert [(item.name, item.spec) for item in parsed] == [
        ("scikit-learn", "==1.4.2"),
        ("torch", "==2.2.1"),
        ("tomli", ">=2"),
        ("mypkg", "@ https://example.com/mypkg-1.0.tar.gz"),
    ]

    merged = declared_dependencies(
        {
            "Dockerfile": "FROM x\nRUN pip install numpy==1.26.4\n",
            "requirements.txt": "numpy==1.26.4\n",
            "tests/requirements.txt": "pytest==8\n",  # test notebooks are not the image
        }
    )
    assert set(merged) == {"numpy"}
    assert merged["numpy"].spec == "==1.26.4"


def test_versions_are_ordered_by_pep_440_not_as_text() -> None:
    changes = compare_manifests(
        [{"name": "a", "version": "1.9"}, {"name": "b", "version": "2.0.0rc1"}],
        [{"name": "a", "version": "1.10"}, {"name": "b", "version": "2.0.0"}],
    )

    assert [(c.name, c.kind) for c in changes] == [("a", "upgraded"), ("b", "upgraded")]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["Dockerfile", "requirements.txt", "dev-requirements.txt"]),
        st.text(
            alphabet=st.sampled_from(list("FROMRUNpipcondainstal =<>!~@:;&|\\\"'#-.\n\t${}a1")),
            max_size=200,
        ),
    ),
    st.lists(
        st.fixed_dictionaries(
            {"name": st.text(max_size=8), "version": st.text(max_size=8)},
            optional={"source": st.sampled_from(["conda", "pip", None])},
        ),
        max_size=6,
    ),
)
def test_odd_files_and_manifests_never_break_a_diff(
    files: dict[str, str], packages: list[dict[str, Any]]
) -> None:
    # Whatever people commit or a manifest holds, the promote confirmation still renders.
    data = Differ(None)(IMAGE, "a" * 40, "b" * 40, {"packages": []}, {"packages": packages})
    assert data["text"].startswith(f"*Diff of {IMAGE}*")
    diff = diff_image({}, files, None, None)
    assert diff.declared is not None
    assert all(change.kind == "added" and change.name for change in diff.declared)
