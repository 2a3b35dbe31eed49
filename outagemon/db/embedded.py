"""An embedded PostgreSQL under state_dir, for a NOC host without a database server.

The binaries come from the `pgserver` wheel; the process is ours: initdb once, then
`postgres` as a child that listens only on a Unix socket, and is stopped with the daemon.
It is the same server the daemon uses in production, reached through asyncpg the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import pwd
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import asyncpg

from outagemon import logs
from outagemon.errors import DatabaseError

log = logs.get("outagemon.embedded")

PORT = 5432
DATABASE = "outagemon"
SUPERUSER = "postgres"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for ".s.PGSQL.5432"
_PR_SET_PDEATHSIG = 1
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def bin_dir() -> Path:
    """Where initdb and postgres are; a sentence if the wheel is missing."""
    # Found without importing pgserver: its own module starts lock files and runtime
    # directories at import time, none of which we use.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError(
            "the embedded PostgreSQL needs the 'pgserver' package; install it, "
            "or set [database] dsn to a PostgreSQL server."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise DatabaseError(f"the 'pgserver' package has no PostgreSQL binaries in {path}.")
    return path


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # If the daemon is killed with SIGKILL, postgres gets SIGINT (fast shutdown) rather
    # than living on, holding the data directory.
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
    # The service has CAP_NET_RAW as an ambient capability for ICMP; the database needs none.
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _check_reachable(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            continue
        if st.st_gid == entry.pw_gid and st.st_mode & 0o010:
            continue
        if not st.st_mode & 0o001:
            raise DatabaseError(
                f"the embedded PostgreSQL runs as {user!r} when outagemon runs as root, and "
                f"{user!r} cannot enter {parent}; choose a [daemon] state_dir it can reach "
                "(every parent directory searchable, chmod o+x), run outagemon as another "
                "user, or set [database] dsn."
            )


class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `state_dir/pgdata`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data_dir = state_dir / "pgdata"
        self.socket_dir = state_dir / "pgsocket"
        self._process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        self._tmp_socket_dir: str | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={self.socket_dir}&port={PORT}"

    def _run_as(self) -> str | None:
        # PostgreSQL refuses to run as root; under systemd outagemon has its own user.
        return "nobody" if os.geteuid() == 0 else None

    async def _exec(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            user=self._user,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    def _prepare_dirs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_dir)) > _SOCKET_PATH_MAX:
            # A Unix socket path must be short; a deep state_dir gets a socket in /tmp.
            self._tmp_socket_dir = tempfile.mkdtemp(prefix="outagemon-pg-")
            self.socket_dir = Path(self._tmp_socket_dir)
        self.socket_dir.mkdir(exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for d in (self.data_dir, self.socket_dir):
                os.chown(d, entry.pw_uid, entry.pw_gid)
            _check_reachable(self.data_dir, self._user)

    async def _stop_leftover(self) -> None:
        """Stop a postgres left running on this data directory by a killed daemon."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return  # not running: postgres itself removes a stale pid file
        if not cmdline or not cmdline[0].endswith(b"postgres"):
            return
        log.warning("embedded.leftover_server", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                return
            await asyncio.sleep(0.05)
        raise DatabaseError(f"a PostgreSQL server (pid {pid}) still runs on {self.data_dir}.")

    async def start(self) -> str:
        """Initialise if needed, start the server, create the database; return its DSN."""
        self._user = self._run_as()
        binaries = bin_dir()
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            code, out = await self._exec(
                str(binaries / "initdb"),
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            )  # fmt: skip
            if code != 0:
                raise DatabaseError(f"initdb failed for {self.data_dir}: {out.strip()}")
            log.info("embedded.initialised", data_dir=str(self.data_dir))
        await self._stop_leftover()
        log_file = open(self.state_dir / "postgres.log", "ab")  # noqa: SIM115 - closed below
        try:
            self._process = self._spawn(binaries, log_file)
        finally:
            log_file.close()  # the child has its own copy
        await self._wait_ready()
        await self._ensure_database()
        log.info("embedded.started", pid=self._process.pid, socket=str(self.socket_dir))
        return self.dsn

    def _spawn(self, binaries: Path, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        # A plain Popen, not an asyncio subprocess: the server must not be tied to one
        # event loop (tests start it in one loop and stop it in another).
        return subprocess.Popen(
            [
                str(binaries / "postgres"),
                "-D", str(self.data_dir),
                "-k", str(self.socket_dir),
                "-p", str(PORT),
                "-c", "listen_addresses=",
                "-c", "logging_collector=off",
                "-c", "log_min_messages=warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            user=self._user,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # a Ctrl-C on the terminal reaches us, and we stop it in order
        )  # fmt: skip

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = asyncio.get_running_loop().time() + 30
        last: Exception | None = None
        while asyncio.get_running_loop().time() < deadline:
            if self._process.poll() is not None:
                tail = (self.state_dir / "postgres.log").read_text(errors="replace")[-2000:]
                raise DatabaseError(f"the embedded PostgreSQL exited at start: {tail.strip()}")
            try:
                conn = await asyncpg.connect(
                    host=str(self.socket_dir), port=PORT, user=SUPERUSER, database="postgres"
                )
            except (OSError, asyncpg.PostgresError) as e:
                last = e
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return
        raise DatabaseError(f"the embedded PostgreSQL did not accept connections in 30 s: {last}")

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(
            host=str(self.socket_dir), port=PORT, user=SUPERUSER, database="postgres"
        )
        try:
            exists = await conn.fetchval("select 1 from pg_database where datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'create database "{DATABASE}"')
        finally:
            await conn.close()

    async def stop(self, grace: float = 3.0) -> None:
        """Fast shutdown (SIGINT); SIGKILL if it has not exited within `grace` seconds."""
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + grace
            # A Popen has no awaitable exit; poll it (it takes a few tens of ms).
            while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                log.warning("embedded.kill", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.info("embedded.stopped", pid=proc.pid)
        if self._tmp_socket_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmp_socket_dir)
            self._tmp_socket_dir = None
