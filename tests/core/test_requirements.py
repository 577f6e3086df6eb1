"""What requirements.txt pins is what nbenv uses: each pin is imported by nbenv's code,
or is named below with the reason it is needed without an import. A pin nothing needs
is one more thing to install, audit and upgrade in every image and deployment."""

from __future__ import annotations

import ast
import re
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Needed at run time, though no module of nbenv imports them by name.
USED_WITHOUT_IMPORT = {
    "psycopg": "SQLAlchemy's postgresql+psycopg dialect loads it for NBENV_DATABASE_URL",
    "ipykernel": "the Python kernel nbclient starts to run test notebooks",
    "jupyter-server": "the local backend's instances are `jupyter server` processes",
    "tzdata": "zoneinfo's time zones (freeze windows) where the OS has none, as in slim images",
    "websocket-client": "slack_sdk's Socket Mode client for `nbenv socket` runs over it",
}


def _pinned() -> set[str]:
    names = set()
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_normal(re.split(r"[\[=<>~! ]", line, maxsplit=1)[0]))
    return names


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_distributions() -> set[str]:
    modules: set[str] = set()
    for folder in ("bot", "functions"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module)
    owners = packages_distributions()
    found: set[str] = set()
    for module in modules:
        top = module.split(".")[0]
        # A namespace package ("google") counts for every distribution that shares it.
        found.update(_normal(name) for name in owners.get(top, []))
    return found


def test_every_pinned_runtime_package_is_used() -> None:
    unused = _pinned() - _imported_distributions() - set(USED_WITHOUT_IMPORT)
    assert not unused, f"pinned in requirements.txt but used nowhere: {sorted(unused)}"
