"""The embedded PostgreSQL is reachable by outagemon alone, and stops only its own server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from outagemon.db.embedded import PORT, EmbeddedPostgres
from outagemon.errors import DatabaseError
from tests.conftest import short_tmp_dir

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes users: needs root")

STRANGER = 4242  # a uid with no account: any local user who is neither root nor the server
NOBODY = 65534  # the server's own user when outagemon runs as root
ROOT = Path(__file__).resolve().parent.parent
# The venv's interpreter may live under /root; other users run the system's Python 3.11
# with this checkout and the venv's packages on the path.
OTHER_PYTHON = "/usr/bin/python3"
OTHER_ENV = {
    "PYTHONPATH": f"{ROOT}:{ROOT}/.venv/lib/python3.11/site-packages",
    "PATH": "/usr/bin:/bin",
}

# Run as another user: connect to the server's socket and send a startup packet. Prints
# "refused: ..." when the socket cannot be reached, else the server's first answer: 'R' with
# code 0 is "you are in" (trust), 10 is "prove you know the password" (SCRAM).
PROBE = r"""
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("refused:", e.strerror); sys.exit(0)
body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
s.sendall(struct.pack("!i", len(body) + 4) + body)
head = s.recv(9)
print("answer:", chr(head[0]), struct.unpack("!i", head[5:9])[0] if head[:1] == b"R" else "")
"""


def as_user(uid: int, *args: str) -> str:
    result = subprocess.run(
        [OTHER_PYTHON, "-c", PROBE, *args],
        user=uid,
        group=uid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@needs_root
def test_another_local_user_cannot_reach_the_embedded_database_and_it_has_no_root_group(
    umask_022: None,
) -> None:
    state = short_tmp_dir() / "state"
    server = EmbeddedPostgres(state)

    async def scenario() -> None:
        dsn = await server.start()
        try:
            socket_path = server.socket_dir / f".s.PGSQL.{PORT}"
            # Someone who is neither root nor the server's user does not get to the socket.
            assert as_user(STRANGER, str(socket_path)).startswith("refused:")
            # Another process of the server's own user reaches it, and must still prove it
            # knows the secret (SCRAM is code 10; code 0 would be "trust": let in).
            assert as_user(NOBODY, str(socket_path)) == "answer: R 10"
            # Without the secret file, outagemon itself is refused too.
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(
                    host=str(server.socket_dir), port=PORT, user="postgres", database="postgres"
                )
            conn = await asyncpg.connect(dsn)
            await conn.close()

            assert server._process is not None
            status = Path(f"/proc/{server._process.pid}/status").read_text().splitlines()
            fields = {line.split(":")[0]: line.split()[1:] for line in status}
            assert fields["Uid"] == [str(NOBODY)] * 4
            assert fields["Gid"] == [str(NOBODY)] * 4, fields["Gid"]
            assert "0" not in fields["Groups"]

            assert stat.S_IMODE(state.stat().st_mode) & 0o007 == 0
            assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o700
            assert stat.S_IMODE(socket_path.stat().st_mode) & 0o077 == 0
            assert stat.S_IMODE(server.passfile.stat().st_mode) == 0o600
            assert server.passfile.stat().st_uid == 0  # outagemon's, not the server's
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_a_cluster_made_with_trust_gets_a_secret_at_the_next_start() -> None:
    # Data directories made by earlier versions have trust in pg_hba.conf and no pgpass.
    state = short_tmp_dir() / "state"
    server = EmbeddedPostgres(state)

    async def scenario() -> None:
        await server.start()
        await server.stop()
        (server.data_dir / "pg_hba.conf").write_text("local all all trust\n")
        server.passfile.unlink()
        again = EmbeddedPostgres(state)
        dsn = await again.start()
        try:
            assert "scram-sha-256" in (again.data_dir / "pg_hba.conf").read_text()
            conn = await asyncpg.connect(dsn)
            await conn.close()
        finally:
            await again.stop()

    asyncio.run(scenario())


@contextlib.contextmanager
def decoy(uid: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose argv[0] ends in "postgres" and that is nothing of ours."""
    program = short_tmp_dir() / "decoy" / "postgres"
    program.parent.mkdir()
    program.parent.chmod(0o755)
    shutil.copy("/bin/sleep", program)
    program.chmod(0o755)
    kwargs = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    proc = subprocess.Popen([str(program), "300"], cwd="/", **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def made_cluster() -> EmbeddedPostgres:
    server = EmbeddedPostgres(short_tmp_dir() / "state")

    async def once() -> None:
        await server.start()
        await server.stop()

    asyncio.run(once())
    return server


def test_a_stale_pid_file_never_stops_an_unrelated_process() -> None:
    server = made_cluster()
    with decoy() as other:
        # As after a host crash: the file names a pid that now belongs to someone else.
        (server.data_dir / "postmaster.pid").write_text(f"{other.pid}\n{server.data_dir}\n")
        again = EmbeddedPostgres(server.state_dir)

        async def scenario() -> None:
            with contextlib.suppress(DatabaseError):  # PostgreSQL's own check decides
                await again.start()
            await again.stop()

        asyncio.run(scenario())
        assert other.poll() is None, "the decoy was stopped"


@needs_root
def test_a_pid_file_naming_a_process_of_the_same_user_elsewhere_is_left_to_postgres() -> None:
    server = made_cluster()
    with decoy(uid=NOBODY) as other:
        (server.data_dir / "postmaster.pid").write_text(f"{other.pid}\n{server.data_dir}\n")
        again = EmbeddedPostgres(server.state_dir)

        async def scenario() -> None:
            try:
                await again.start()
            finally:
                await again.stop()

        # PostgreSQL sees a live process of its user and refuses, in a sentence.
        with pytest.raises(DatabaseError, match="lock file"):
            asyncio.run(scenario())
        assert other.poll() is None, "the decoy was stopped"


def test_a_server_left_running_on_our_data_directory_is_stopped() -> None:
    # A killed daemon leaves its server behind; the next start stops it and takes over.
    state = short_tmp_dir() / "state"
    first = EmbeddedPostgres(state)
    second = EmbeddedPostgres(state)

    async def scenario() -> None:
        await first.start()
        assert first._process is not None
        orphan = first._process
        # Its owner dies: the kernel drops the owner's lock (a live owner's server is used,
        # never stopped: tests/test_embedded_shared.py).
        first._release_lock()
        try:
            dsn = await second.start()
            assert orphan.poll() is not None, "the leftover server still runs"
            conn = await asyncpg.connect(dsn)
            await conn.close()
        finally:
            await second.stop()
            first._process = None
            if orphan.poll() is None:
                orphan.kill()
            orphan.wait()

    asyncio.run(scenario())


@needs_root
def test_a_process_we_may_not_signal_is_left_alone_without_a_traceback() -> None:
    # outagemon as an ordinary user, the pid file naming a root process: it may neither
    # inspect nor signal it, and says nothing (PostgreSQL then judges the file itself).
    state = short_tmp_dir() / "state"
    (state / "pgdata").mkdir(parents=True)
    for d in (state, state / "pgdata"):
        os.chown(d, NOBODY, NOBODY)
    code = (
        "import asyncio, sys; from pathlib import Path; "
        "from outagemon.db.embedded import EmbeddedPostgres; "
        "asyncio.run(EmbeddedPostgres(Path(sys.argv[1]))._stop_leftover()); print('done')"
    )
    with decoy() as other:
        (state / "pgdata" / "postmaster.pid").write_text(f"{other.pid}\n")
        result = subprocess.run(
            [OTHER_PYTHON, "-c", code, str(state)],
            env=OTHER_ENV,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (result.stdout.strip(), result.stderr) == ("done", "")
        assert other.poll() is None
