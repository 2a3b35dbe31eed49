"""A second process on a state directory whose embedded PostgreSQL a live daemon owns
uses that server and never stops it; a dead server is started again by the daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from outagemon import daemon
from outagemon.db import migrate, store
from outagemon.db.embedded import EmbeddedPostgres

from .conftest import short_tmp_dir


def _postmaster(server: EmbeddedPostgres) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _cli(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outagemon", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out, err


def test_the_cli_uses_the_daemons_running_server_and_leaves_it_running() -> None:
    state = short_tmp_dir() / "state"
    cfg = state.parent / "outagemon.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{state}"\n')
    owner = EmbeddedPostgres(state)  # as the daemon: this process started the server

    async def scenario() -> None:
        dsn = await owner.start()
        try:
            await migrate.migrate(dsn)
            pid = _postmaster(owner)
            code, out, err = await _cli("migrate", "-c", str(cfg))
            assert code == 0, err.decode()
            assert out == b"applied 0 migration(s)\n"  # the logs are on standard error
            assert b"embedded.attached" in err and b"leftover" not in err, err.decode()
            assert _alive(pid), "migrate stopped the daemon's PostgreSQL"

            code, out, err = await _cli("report", "downtime", "-c", str(cfg),
                                        "--from", "2026-01-01", "--to", "2026-01-02")  # fmt: skip
            assert code == 0, err.decode()
            assert _alive(pid), "report downtime stopped the daemon's PostgreSQL"
            assert _postmaster(owner) == pid
            # Standard output is the API's CSV, byte for byte (the same COPY), no log line.
            chunks: list[bytes] = []

            async def write(chunk: bytes) -> None:
                chunks.append(chunk)

            conn = await store.connection(dsn)
            try:
                start = datetime(2026, 1, 1, tzinfo=UTC)
                end = datetime(2026, 1, 2, tzinfo=UTC)
                await store.downtime_csv(conn, start, end, datetime.now(UTC), 0.0, write, 30.0)
            finally:
                await conn.close()
            assert out == b"".join(chunks)
            assert out.startswith(b"account,")
            # The daemon's server still serves.
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("select 1") == 1
            await conn.close()
        finally:
            await owner.stop()

    asyncio.run(scenario())


def test_an_unwritable_output_is_bad_input_naming_the_path() -> None:
    state = short_tmp_dir() / "state"
    cfg = state.parent / "outagemon.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{state}"\n')
    args = ["report", "downtime", "-c", str(cfg), "--from", "2026-01-01", "--to", "2026-01-02"]
    code, out, err = asyncio.run(_cli(*args, "-o", "/nonexistent/dir/x.csv"))
    assert code == 2, err.decode()
    assert b"/nonexistent/dir/x.csv" in err
    assert out == b""


def test_a_server_whose_owner_died_is_a_leftover_and_is_replaced() -> None:
    state = short_tmp_dir() / "state"
    # An owner that dies without stopping its server (SIGKILL): its lock goes with it.
    script = (
        "import asyncio, os, sys, time\n"
        "from pathlib import Path\n"
        "from outagemon.db.embedded import EmbeddedPostgres\n"
        "async def go():\n"
        "    s = EmbeddedPostgres(Path(sys.argv[1]))\n"
        "    await s.start()\n"
        "    print('pid', s._process.pid, flush=True)\n"
        "    await asyncio.sleep(300)\n"
        "asyncio.run(go())\n"
    )

    async def scenario() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(state), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"pid "):  # after the (unconfigured) log lines
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "the owner exited"
        first = int(line.split()[1])
        second = EmbeddedPostgres(state)
        # While the owner lives, the second one attaches: the same server, not stopped.
        await second.start()
        assert second.attached and not second.owner and _alive(first)
        await second.stop()
        assert _alive(first)
        proc.kill()
        await proc.wait()
        # Owner dead: its server is a leftover (gone by the death signal, or stopped now).
        third = EmbeddedPostgres(state)
        dsn = await third.start()
        try:
            assert third.owner and not _alive(first)
            conn = await asyncpg.connect(dsn)
            await conn.close()
        finally:
            await third.stop()

    asyncio.run(scenario())


def test_the_daemon_starts_its_killed_server_again() -> None:
    server = EmbeddedPostgres(short_tmp_dir() / "state")

    async def scenario() -> None:
        dsn = await server.start()
        watcher = asyncio.create_task(daemon.watch_embedded(server, every=0.1))
        try:
            first = _postmaster(server)
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, "the server was not started again"
                await asyncio.sleep(0.1)
                try:
                    conn = await asyncpg.connect(dsn)
                except (OSError, asyncpg.PostgresError):
                    continue
                await conn.close()
                if _postmaster(server) != first:
                    break
            assert not server.died()
        finally:
            watcher.cancel()
            await server.stop()

    asyncio.run(scenario())
