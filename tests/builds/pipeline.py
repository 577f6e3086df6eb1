"""The Cloud Build configs as data: their substitutions, and their steps run here.

A step's own command line runs on this machine with Cloud Build's substitutions applied
and /workspace pointing at a scratch copy of the files the pipeline uses, so the test
steps' scripts are exercised for real (with this Python standing in for the image's).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import yaml
from nbformat import v4

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOUDBUILD = REPO_ROOT / "config" / "cloudbuild"
# Cloud Build's built-in substitutions (cloud.google.com/build/docs/configuring-builds/
# substitute-variable-values): all builds, and builds started by triggers.
BUILTINS = frozenset(
    {
        "PROJECT_ID",
        "BUILD_ID",
        "PROJECT_NUMBER",
        "LOCATION",
        "TRIGGER_NAME",
        "COMMIT_SHA",
        "REVISION_ID",
        "SHORT_SHA",
        "REPO_NAME",
        "REPO_FULL_NAME",
        "BRANCH_NAME",
        "TAG_NAME",
        "REF_NAME",
        "TRIGGER_BUILD_CONFIG_PATH",
        "SERVICE_ACCOUNT_EMAIL",
        "SERVICE_ACCOUNT",
    }
)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ESCAPED = "\0"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLOUDBUILD / name).read_text(encoding="utf-8"))


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    return []


def variables(text: str) -> set[str]:
    """The substitutions TEXT refers to; `$$` is Cloud Build's escape for a literal `$`."""
    text = text.replace("$$", _ESCAPED)
    return {braced or bare for braced, bare in _VARIABLE.findall(text)}


def substitute(text: str, values: dict[str, str]) -> str:
    """TEXT as Cloud Build hands it to the step (dynamic substitutions on)."""
    text = text.replace("$$", _ESCAPED)
    for _ in range(5):  # defaults may refer to other substitutions
        text = _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], text)
    return text.replace(_ESCAPED, "$")


def values(config: dict[str, Any], **given: str) -> dict[str, str]:
    defaults = {key: str(value) for key, value in (config.get("substitutions") or {}).items()}
    builtins = {
        "PROJECT_ID": "nbenv-test",
        "PROJECT_NUMBER": "123456789",
        "LOCATION": "us-central1",
        "BUILD_ID": "5b1f0c7e-0000-4000-8000-000000000001",
        "COMMIT_SHA": "0" * 40,
        "SHORT_SHA": "0" * 7,
        "BRANCH_NAME": "staging",
    }
    return {**builtins, **defaults, **given}


def step(config: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in config["steps"] if s.get("id") == step_id)


def write_notebook(path: Path, *sources: str) -> None:
    notebook = v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        cells=[v4.new_code_cell(source) for source in sources],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))


def workspace(tmp: Path, image: str, notebooks: dict[str, list[str]]) -> Path:
    """A scratch /workspace: the files of this repository the pipeline runs, and IMAGE's tests."""
    root = tmp / "workspace"
    for relative in ("bot/runner/notebook_tests.py", "config/cloudbuild/publish_report.py"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / relative, root / relative)
    for name, cells in notebooks.items():
        write_notebook(root / "notebooks" / image / "tests" / name, *cells)
    bin_dir = tmp / "bin"  # `python` in the step is the image's; here it is ours
    bin_dir.mkdir(exist_ok=True)
    # A wrapper, not a symlink: Python started through a symlink outside the venv finds no
    # pyvenv.cfg beside it and runs the base interpreter, without our packages.
    wrapper = bin_dir / "python"
    wrapper.unlink(missing_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return root


def run_step(
    config: dict[str, Any],
    step_id: str,
    root: Path,
    subs: dict[str, str],
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a step's entrypoint and args here, /workspace being ROOT."""
    spec = step(config, step_id)
    argv = [spec.get("entrypoint") or "docker"] + [substitute(a, subs) for a in spec["args"]]
    argv = [arg.replace("/workspace", str(root)) for arg in argv]
    path = f"{root.parent / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        argv,
        cwd=root,
        env={**os.environ, "PATH": path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
