"""An embedded PostgreSQL under state_dir, for a NOC host without a database server.

The binaries come from the `pgserver` wheel; the process is ours: initdb once, then
`postgres` as a child that listens only on a Unix socket, and is stopped with the daemon.
It is the same server the daemon uses in production, reached through asyncpg the same way.

Nobody else on the host may reach it: the socket and its directory are 0700, and every
connection authenticates with SCRAM and a random secret kept in `state_dir/pgpass` (0600).
When outagemon runs as root the server runs as `nobody` with nobody's group and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.util
import os
import pwd
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO
from urllib.parse import quote

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
OWNER_LOCK = "pgowner.lock"  # flock-ed by the process that started the server, while it lives
PASSFILE = "pgpass"  # `*:*:*:postgres:SECRET`, libpq's format, read by asyncpg
HBA = (
    "# Written by outagemon at every start: the Unix socket only, with the secret in pgpass.\n"
    "local all all scram-sha-256\n"
)


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


def _running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has: it waits for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `state_dir/pgdata`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data_dir = state_dir / "pgdata"
        self.socket_dir = state_dir / "pgsocket"
        self.passfile = state_dir / PASSFILE
        self._process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        self._tmp_socket_dir: str | None = None
        self._lock_fd: int | None = None  # held while we own the server
        self.attached = False  # using a server another live process started

    @property
    def owner(self) -> bool:
        """Whether this process started the server (and so alone may stop it)."""
        return self._lock_fd is not None

    @property
    def dsn(self) -> str:
        host, passfile = quote(str(self.socket_dir)), quote(str(self.passfile))
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={host}&port={PORT}&passfile={passfile}"

    def _run_as(self) -> str | None:
        # PostgreSQL refuses to run as root; under systemd outagemon has its own user.
        return "nobody" if os.geteuid() == 0 else None

    def _identity(self) -> tuple[int | None, int | None, list[int] | None]:
        """Popen's user, group and extra_groups for the server: its own group and no other
        (root's groups would otherwise follow it)."""
        if self._user is None:
            return None, None, None
        entry = pwd.getpwnam(self._user)
        return entry.pw_uid, entry.pw_gid, []

    async def _connect(self, database: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=str(self.socket_dir),
            port=PORT,
            user=SUPERUSER,
            database=database,
            passfile=str(self.passfile),
        )

    async def _exec(self, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
        user, group, extra_groups = self._identity()
        proc = await asyncio.create_subprocess_exec(
            *args,
            user=user,
            group=group,
            extra_groups=extra_groups,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await proc.communicate(stdin)
        except asyncio.CancelledError:
            # The daemon stops while initdb runs (the database starts in the background):
            # initdb must not outlive it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, out.decode(errors="replace")

    def _prepare_dirs(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # An existing directory keeps its mode through mkdir: set it. As root the server
        # (nobody) must pass through state_dir, so nobody's group may search it, no one else.
        if self._user is None:
            self.state_dir.chmod(0o700)
        else:
            os.chown(self.state_dir, -1, pwd.getpwnam(self._user).pw_gid)
            self.state_dir.chmod(0o710)
        if len(str(self.socket_dir)) > _SOCKET_PATH_MAX and self._tmp_socket_dir is None:
            # A Unix socket path must be short; a deep state_dir gets a socket in /tmp.
            self._tmp_socket_dir = tempfile.mkdtemp(prefix="outagemon-pg-")
            self.socket_dir = Path(self._tmp_socket_dir)
        for d in (self.socket_dir, self.data_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            d.chmod(0o700)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for d in (self.data_dir, self.socket_dir):
                os.chown(d, entry.pw_uid, entry.pw_gid)
            _check_reachable(self.data_dir, self._user)

    def _secret(self) -> tuple[str, bool]:
        """The superuser's password, and whether it was made just now."""
        try:
            line = self.passfile.read_text().strip()
        except FileNotFoundError:
            line = ""
        secret = line.rsplit(":", 1)[-1]
        if line and secret:
            self.passfile.chmod(0o600)
            return secret, False
        secret = secrets.token_urlsafe(32)  # [A-Za-z0-9_-]: safe inside SQL quotes
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:{SUPERUSER}:{secret}\n")
        self.passfile.chmod(0o600)
        return secret, True

    async def _set_password(self, binaries: Path, secret: str) -> None:
        """A cluster made before it had a secret (trust), or whose pgpass was lost: set the
        password in single-user mode, which needs no connection, before the server starts."""
        code, out = await self._exec(
            str(binaries / "postgres"), "--single", "-D", str(self.data_dir), SUPERUSER,
            stdin=f"alter role {SUPERUSER} password '{secret}'\n".encode(),
        )  # fmt: skip
        if code != 0:
            raise DatabaseError(
                f"could not set the embedded PostgreSQL's password in {self.data_dir}: "
                + out.replace(secret, "***").strip()
            )
        log.info("embedded.password_set", data_dir=str(self.data_dir))

    def _write_private(self, path: Path, text: str) -> None:
        """A 0600 file owned by the server's user."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        uid, gid, _ = self._identity()
        if uid is not None and gid is not None:
            os.chown(path, uid, gid)

    def _is_our_leftover(self, pid: int) -> bool:
        """Whether `pid` is a postgres serving our data directory as our server's user.

        A host crash leaves postmaster.pid behind and the pid may now belong to anything,
        another PostgreSQL included: only a process whose working directory is our data
        directory (postgres chdirs there) and whose owner is our server's user qualifies.
        Anything else, or anything we may not inspect, is left to PostgreSQL, which refuses
        to start while a live postmaster holds the directory and ignores a stale file.
        """
        proc = Path(f"/proc/{pid}")
        uid = pwd.getpwnam(self._user).pw_uid if self._user is not None else os.geteuid()
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            owner = proc.stat().st_uid
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:  # gone, or not ours to look at (PermissionError)
            return False
        return (
            bool(cmdline)
            and cmdline[0].endswith(b"postgres")
            and owner == uid
            and cwd == self.data_dir.resolve()
        )

    async def _stop_leftover(self) -> None:
        """Stop a postgres left running on this data directory by a killed daemon."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if pid == os.getpid() or not self._is_our_leftover(pid):
            return
        log.warning("embedded.leftover_server", pid=pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGINT)
        for _ in range(100):
            if not _running(pid):
                return
            await asyncio.sleep(0.05)
        raise DatabaseError(f"a PostgreSQL server (pid {pid}) still runs on {self.data_dir}.")

    def _try_lock(self) -> bool:
        """Take the owner's lock if no live process holds it; write our pid and socket.

        The lock is an flock: the kernel drops it when its holder dies, however it dies,
        so a held lock means the server's owner lives and a free one that it does not."""
        if self._lock_fd is not None:
            return True
        path = self.state_dir / OWNER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _write_owner(self) -> None:
        assert self._lock_fd is not None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n{self.socket_dir}\n".encode(), 0)

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # drops the flock

    def _owner_lives(self) -> bool:
        """Whether another process holds the owner's lock (and so its server is not ours)."""
        if self._lock_fd is not None:
            return False
        path = self.state_dir / OWNER_LOCK
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _owner_socket(self) -> Path | None:
        try:
            lines = (self.state_dir / OWNER_LOCK).read_text().splitlines()
        except OSError:
            return None
        return Path(lines[1]) if len(lines) >= 2 and lines[1] else None

    async def start(self, attach_wait: float = 60.0) -> str:
        """Initialise if needed, start the server, create the database; return its DSN.

        If another live process (a running daemon) started the server on this state
        directory, use that one through its socket instead, and never stop it: only a
        server whose owner has died is a leftover to stop."""
        self._user = self._run_as()
        binaries = bin_dir()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        deadline = time.monotonic() + attach_wait
        last: Exception | None = None
        while not self._try_lock():
            # The owner lives: its server serves, or soon will (it may be in initdb).
            socket = self._owner_socket()
            if socket is not None:
                self.socket_dir = socket
            try:
                conn = await self._connect(DATABASE)
            except (OSError, asyncpg.PostgresError) as e:
                last = e
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"another outagemon process owns the embedded PostgreSQL in "
                        f"{self.state_dir} and its server does not answer: {last}"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            self.attached = True
            log.info("embedded.attached", socket=str(self.socket_dir))
            return self.dsn
        self.attached = False
        try:
            return await self._start_owned(binaries)
        except BaseException:
            self._release_lock()
            raise

    async def _start_owned(self, binaries: Path) -> str:
        self.socket_dir = (
            self.state_dir / "pgsocket"
            if self._tmp_socket_dir is None
            else Path(self._tmp_socket_dir)
        )
        self._prepare_dirs()
        self._write_owner()
        secret, new_secret = self._secret()
        await self._stop_leftover()
        if not (self.data_dir / "PG_VERSION").exists():
            # initdb reads the password from a file: one the server's user may read (it owns
            # the data anyway), in its private socket directory, for the moment initdb runs.
            pwfile = self.socket_dir / "initdb-password"
            self._write_private(pwfile, f"{secret}\n")
            try:
                code, out = await self._exec(
                    str(binaries / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                )  # fmt: skip
            finally:
                pwfile.unlink(missing_ok=True)
            if code != 0:
                raise DatabaseError(f"initdb failed for {self.data_dir}: {out.strip()}")
            log.info("embedded.initialised", data_dir=str(self.data_dir))
        elif new_secret:
            await self._set_password(binaries, secret)
        self._write_private(self.data_dir / "pg_hba.conf", HBA)
        log_fd = os.open(
            self.state_dir / "postgres.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        log_file = os.fdopen(log_fd, "ab")
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
        user, group, extra_groups = self._identity()
        return subprocess.Popen(
            [
                str(binaries / "postgres"),
                "-D", str(self.data_dir),
                "-k", str(self.socket_dir),
                "-p", str(PORT),
                "-c", "listen_addresses=",
                "-c", "unix_socket_permissions=0700",
                "-c", "password_encryption=scram-sha-256",
                "-c", "logging_collector=off",
                "-c", "log_min_messages=warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # a Ctrl-C on the terminal reaches us, and we stop it in order
            user=user,
            group=group,
            extra_groups=extra_groups,
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
                conn = await self._connect("postgres")
            except (OSError, asyncpg.PostgresError) as e:
                last = e
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return
        raise DatabaseError(f"the embedded PostgreSQL did not accept connections in 30 s: {last}")

    async def _ensure_database(self) -> None:
        conn = await self._connect("postgres")
        try:
            exists = await conn.fetchval("select 1 from pg_database where datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'create database "{DATABASE}"')
        finally:
            await conn.close()

    async def stop(self, grace: float = 3.0) -> None:
        """Fast shutdown (SIGINT); SIGKILL if it has not exited within `grace` seconds."""
        proc, self._process = self._process, None
        self.attached = False  # a server we did not start is never ours to stop
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
        if self._lock_fd is not None:
            if self._tmp_socket_dir is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(self._tmp_socket_dir)
                self._tmp_socket_dir = None
            self._release_lock()

    def died(self) -> bool:
        """Whether the server we use is gone for good: ours exited, or the live process
        that owned the one we attached to has died (its server went with it)."""
        if self._process is not None:
            return self._process.poll() is not None
        return self.attached and not self._owner_lives()
