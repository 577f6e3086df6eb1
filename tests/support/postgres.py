"""A throwaway PostgreSQL cluster for tests.

The store must behave the same on SQLite and PostgreSQL, and only a real server
shows PostgreSQL's locking, isolation and type behaviour, so tests start one in a
temporary directory rather than mocking it::

    with PostgresCluster() as cluster:
        url = cluster.create_database("store_test")
        engine = sqlalchemy.create_engine(url)

The cluster is tuned for speed, not durability (fsync off, no WAL flushes), and is
removed on `stop()` or, failing that, when the interpreter exits.

Run as a module from the repository root (`python -m tests.support.postgres`) it
prints the server's bin directory, or exits 1 if there is none; `.ci/run` uses that
to decide whether to install the server, so the lookup rules live in one place.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, Self

from .lifecycle import Startable

__all__ = [
    "INSTALL_HINT",
    "PostgresCluster",
    "PostgresNotFoundError",
    "find_postgres_bin",
    "require_postgres_bin",
]

INSTALL_HINT = "apt-get install postgresql"
SKIP_REASON = f"PostgreSQL server not installed: {INSTALL_HINT}"

# initdb refuses to run as root, so as root every server command runs as this user.
SERVICE_USER = "postgres"
DB_USER = "postgres"
HOST = "127.0.0.1"

_REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_START_TIMEOUT_S = 60
_PORT_ATTEMPTS = 3


class PostgresNotFoundError(RuntimeError):
    """No usable PostgreSQL server binaries (initdb, pg_ctl, postgres)."""


def _has_server_programs(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in _REQUIRED_PROGRAMS)


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/9.6/bin sorts below /usr/lib/postgresql/15/bin
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (-1,)


def find_postgres_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None.

    Looked up in order: $NBENV_PG_BIN, the newest /usr/lib/postgresql/*/bin
    (Debian/Ubuntu keep the server off PATH), `pg_config --bindir`, and the
    directory of `initdb` on PATH (symlinks resolved).
    """
    override = os.environ.get("NBENV_PG_BIN")
    if override:
        # An explicit setting that is wrong should be reported, not silently replaced
        # by whatever else is installed.
        path = Path(override)
        if not _has_server_programs(path):
            raise PostgresNotFoundError(
                f"NBENV_PG_BIN={override} does not contain {', '.join(_REQUIRED_PROGRAMS)}"
            )
        return path

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for candidate in debian:
        if _has_server_programs(candidate):
            return candidate

    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            # libpq-dev ships pg_config without the server, so check what it points at.
            if out and _has_server_programs(Path(out)):
                return Path(out)

    initdb = shutil.which("initdb")
    if initdb:
        candidate = Path(initdb).resolve().parent
        if _has_server_programs(candidate):
            return candidate
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_postgres_bin() -> Path:
    """The server's bin directory; the one place that decides what a missing server means.

    In CI (env CI set) PostgreSQL tests must never be silently skipped, so a missing
    server fails the test; on a developer machine it skips with the install hint.
    """
    import pytest  # only this function needs pytest; the cluster is usable without it

    try:
        bin_dir = find_postgres_bin()
    except PostgresNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    if bin_dir is not None:
        return bin_dir
    if _in_ci():
        pytest.fail(
            f"{SKIP_REASON} (CI is set, so PostgreSQL tests may not be skipped)", pytrace=False
        )
    pytest.skip(SKIP_REASON)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _traversable_by_others(path: Path) -> bool:
    """Whether a non-root user can reach entries below `path`."""
    for part in (path, *path.parents):
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _clean_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGHOST and friends from the caller's shell would redirect the
    # server tools to some other cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PostgresCluster(Startable):
    """A private PostgreSQL server in a temporary directory, listening on 127.0.0.1.

    Attributes once started: `port`, `base_dir` (the temporary directory),
    `data_dir`, `socket_dir`, `log_path`, `startup_seconds`; `bin_dir` is known
    from construction (or looked up on `start()`).
    """

    def __init__(self, bin_dir: Path | str | None = None) -> None:
        self.bin_dir: Path | None = Path(bin_dir) if bin_dir is not None else None
        self.port: int | None = None
        self.base_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._owner_pid: int | None = None
        self._lock = threading.Lock()

    # -- paths and URLs -----------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._base() / "server.log"

    @property
    def running(self) -> bool:
        return self.base_dir is not None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of a database in this cluster."""
        if self.port is None:
            raise RuntimeError("PostgresCluster is not started")
        return f"postgresql+psycopg://{DB_USER}@{HOST}:{self.port}/{dbname}"

    def _base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("PostgresCluster is not started")
        return self.base_dir

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        with self._lock:
            if self.base_dir is not None:
                return self
            began = time.monotonic()
            if self.bin_dir is None:
                self.bin_dir = find_postgres_bin()
            if self.bin_dir is None or not _has_server_programs(self.bin_dir):
                raise PostgresNotFoundError(
                    f"PostgreSQL server binaries not found (looked in $NBENV_PG_BIN, "
                    f"/usr/lib/postgresql/*/bin, pg_config --bindir, PATH); "
                    f"install them with `{INSTALL_HINT}` or set NBENV_PG_BIN"
                )
            self.base_dir = self._make_base_dir()
            self._owner_pid = os.getpid()
            # Registered before anything can fail, so a half-started cluster is removed too.
            atexit.register(self._stop_at_exit)
            try:
                self._initdb()
                self._start_server()
                self._wait_ready()
            except BaseException:
                self._teardown()
                raise
            self.startup_seconds = time.monotonic() - began
            return self

    def stop(self) -> None:
        """Stop the server at once (no checkpoint: the data is thrown away) and delete it."""
        with self._lock:
            self._teardown()

    def restart(self) -> None:
        """Restart the server on the same port and data, as an operator or a failover does:
        every open connection is cut (fast shutdown), and the data stays."""
        with self._lock:
            if self.base_dir is None:
                raise RuntimeError("PostgresCluster is not started")
            self._run_server_tool(
                [
                    *("pg_ctl", "restart", "-D", str(self.data_dir), "-l", str(self.log_path)),
                    *("-m", "fast", "-w", "-t", str(_START_TIMEOUT_S)),
                ],
                timeout=_START_TIMEOUT_S + 10,
            )
            self._wait_ready()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped (fast shutdown: connections cut) for the time of the block,
        then started again on the same port and data, as during maintenance."""
        with self._lock:
            if self.base_dir is None:
                raise RuntimeError("PostgresCluster is not started")
            stop = ("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")
            self._run_server_tool([*stop], timeout=_START_TIMEOUT_S + 10)
        try:
            yield
        finally:
            with self._lock:
                start = ("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path))
                self._run_server_tool(
                    [*start, "-o", f"-p {self.port}", "-w", "-t", str(_START_TIMEOUT_S)],
                    timeout=_START_TIMEOUT_S + 10,
                )
                self._wait_ready()

    def _stop_at_exit(self) -> None:
        # A forked child inherits the registration but does not own the server.
        if self._owner_pid == os.getpid():
            self.stop()

    def _teardown(self) -> None:
        if self.base_dir is None:
            return
        base = self.base_dir
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run_server_tool(
                    ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"],
                    check=False,
                    timeout=30,
                )
        finally:
            shutil.rmtree(base, ignore_errors=True)
            atexit.unregister(self._stop_at_exit)
            self.base_dir = None
            self.port = None
            self._owner_pid = None

    def _make_base_dir(self) -> Path:
        root = os.geteuid() == 0
        parent = Path(tempfile.gettempdir())
        if root and not _traversable_by_others(parent):
            # The server runs as `postgres`, which must be able to reach its data dir.
            parent = Path("/tmp")
        base = Path(tempfile.mkdtemp(prefix="nbenv-pg-", dir=parent))
        (base / "sock").mkdir()
        if root:
            try:
                entry = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                shutil.rmtree(base, ignore_errors=True)
                raise PostgresNotFoundError(
                    f"running as root needs a '{SERVICE_USER}' system user to run the server "
                    f"(`{INSTALL_HINT}` creates it)"
                ) from None
            for path in (base, base / "sock"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return base

    def _initdb(self) -> None:
        self._run_server_tool(
            [
                "initdb",
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                DB_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=_START_TIMEOUT_S,
        )
        settings = {
            "listen_addresses": f"'{HOST}'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "100",
            # Durability is pointless for data deleted after the run; these make DDL-heavy
            # test setup several times faster.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            # Small, so that several clusters (parallel test workers) fit in one machine.
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# nbenv test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start_server(self) -> None:
        last_error: subprocess.CalledProcessError | None = None
        for _ in range(_PORT_ATTEMPTS):
            # The port is free now but can be taken before the server binds it; a
            # failed start is retried on a fresh port.
            port = _free_port()
            try:
                self._run_server_tool(
                    [
                        "pg_ctl",
                        "start",
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_path),
                        "-o",
                        f"-p {port}",
                        "-w",
                        "-t",
                        str(_START_TIMEOUT_S),
                    ],
                    timeout=_START_TIMEOUT_S + 10,
                )
            except subprocess.CalledProcessError as exc:
                last_error = exc
                continue
            self.port = port
            return
        raise RuntimeError(
            f"PostgreSQL did not start after {_PORT_ATTEMPTS} attempts: {last_error}\n"
            f"{self._log_tail()}"
        )

    def _wait_ready(self) -> None:
        # pg_ctl -w already waited for the postmaster; this also proves the TCP listener
        # answers, which is what the tests use.
        assert self.bin_dir is not None and self.port is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            probe = subprocess.run(
                [
                    str(self.bin_dir / "pg_isready"),
                    "-h",
                    HOST,
                    "-p",
                    str(self.port),
                    "-U",
                    DB_USER,
                    "-d",
                    "postgres",
                    "-t",
                    "2",
                ],
                capture_output=True,
                env=_clean_env(),
                check=False,
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL on port {self.port} not ready after {_START_TIMEOUT_S}s\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)

    def _run_server_tool(
        self, argv: list[str], *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        assert self.bin_dir is not None
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_env(),
            # The caller's cwd may be unreadable for the `postgres` user.
            cwd=self.base_dir,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, command, result.stdout, result.stderr
            )
        return result

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, RuntimeError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- databases --------------------------------------------------------------------

    def _admin_connect(self) -> Any:
        import psycopg  # loaded on use so that finding binaries needs no driver

        return psycopg.connect(
            host=HOST, port=self.port, user=DB_USER, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a random name when None) and return its SQLAlchemy URL."""
        if name is None:
            name = f"test_{os.urandom(6).hex()}"
        _check_db_name(name)
        with self._admin_connect() as conn:
            # template0: nothing a previous test put into template1 leaks in.
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting anyone still using it (missing is fine)."""
        _check_db_name(name)
        with self._admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_db_name(name: str) -> None:
    # Names are interpolated into SQL, so only plain lower-case identifiers are allowed.
    if not _DB_NAME.match(name):
        raise ValueError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*, at most 63")


def _main(argv: list[str]) -> NoReturn:
    del argv
    try:
        bin_dir = find_postgres_bin()
    except PostgresNotFoundError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if bin_dir is None:
        print(SKIP_REASON, file=sys.stderr)
        sys.exit(1)
    print(bin_dir)
    sys.exit(0)


if __name__ == "__main__":
    _main(sys.argv[1:])
