"""Text no database can store (NUL, lone surrogates) is stored with a stand-in, U+FFFD.

Through the real entry points, on SQLite and PostgreSQL: PostgreSQL refuses NUL in text
(it used to turn `/nbenv freeze IMAGE nul<NUL>byte` into a 500), and no database encoding
takes the lone surrogates Python makes of non-UTF-8 command-line bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.store import tables as t
from tests.conftest import OWNER, TESTER
from tests.slack.bot import ask, audit, in_production, published

NUL = "\x00"
STAND_IN = "\ufffd"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database(request: pytest.FixtureRequest, workdir: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{workdir / 'nbenv.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    return str(cluster.create_database(f"unstorable_{uuid.uuid4().hex[:10]}"))


def test_nul_in_freeze_reject_and_rollback_reasons_is_stored_not_a_500(
    server: Any, rt: Any, image: str, slack: Any
) -> None:
    _, v2 = in_production(rt, image, "v1", "v2")
    published(rt, image, "v3")

    rejected = ask(server, slack, TESTER, f"reject {image} crashes{NUL}on import")
    assert "rejected" in rejected
    rolled = ask(server, slack, OWNER, f"rollback {image} --yes --reason bad{NUL}release")
    assert "rolled back" in rolled
    frozen = ask(server, slack, OWNER, f"freeze {image} nul{NUL}byte")
    assert "froze" in frozen

    assert f"nul{STAND_IN}byte" in rt.nbenv.handle(OWNER, f"status {image}").text
    with rt.store.read() as tx:
        reasons = tx.connection.execute(select(t.verdicts.c.reason)).scalars().all()
        revoked = tx.versions.get(image, v2)
    assert f"crashes{STAND_IN}on import" in reasons
    assert revoked is not None and revoked.revoked_reason == f"bad{STAND_IN}release"
    # The audit log keeps them as written (JSON holds NUL) and its chain still verifies.
    assert [e.action for e in audit(rt, image)][-3:] == ["reject", "rollback", "freeze"]
    assert rt.nbenv.verify_audit().ok


def _cli_env(config_path: Path, database: str, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NBENV_CONFIG": str(config_path),
        "NBENV_DATABASE_URL": database,
        "NBENV_HOME": str(workdir / "home"),
    }


def test_non_utf8_bytes_on_the_command_line_are_stored(
    server: Any, rt: Any, image: str, config_path: Path, database: str, workdir: Path
) -> None:
    env = _cli_env(config_path, database, workdir)
    # Python decodes an invalid byte of argv to a lone surrogate (surrogateescape).
    command = [sys.executable, "-m", "bot", "--as", OWNER, "freeze", image, b"bad\xffbyte"]
    done = subprocess.run(command, env=env, capture_output=True, timeout=120)

    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in done.stderr
    assert f"bad{STAND_IN}byte" in rt.nbenv.handle(OWNER, f"status {image}").text
    assert rt.nbenv.verify_audit().ok


def test_nul_typed_into_the_cli_shell_is_stored(
    server: Any, rt: Any, image: str, config_path: Path, database: str, workdir: Path
) -> None:
    env = _cli_env(config_path, database, workdir)
    script = f"/nbenv freeze {image} nul{NUL}byte\n".encode()
    command = [sys.executable, "-m", "bot", "--as", OWNER, "shell"]
    done = subprocess.run(command, env=env, input=script, capture_output=True, timeout=120)

    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in done.stderr
    assert f"nul{STAND_IN}byte" in rt.nbenv.handle(OWNER, f"status {image}").text
