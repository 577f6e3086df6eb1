"""Cold start on Cloud Run: the gcp runtime starts without loading a google-cloud client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from bot.bootstrap import build_runtime
runtime = build_runtime(sys.argv[1], sys.argv[2])
assert runtime.nbenv.backend.name == "gcp"
heavy = ("google.cloud.", "google.api_core", "grpc", "google.auth")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
"""


def test_building_the_gcp_runtime_imports_no_google_client(gcp_config_file, tmp_path) -> None:
    database = f"sqlite:///{tmp_path / 'cold.db'}"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(gcp_config_file), database],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert json.loads(result.stdout) == []


def test_the_first_call_loads_the_client_it_needs_only(backend, google) -> None:
    backend.mirrors_pointers()
    google.push("nlp.keras-batch", "a" * 40)

    backend.check_version("nlp.keras-batch", "a" * 40)

    assert [r.api for r in google.requests()] == ["artifactregistry"]
