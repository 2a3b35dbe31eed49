"""Shared fixtures: a real PostgreSQL (the machine's, else an embedded one) and helpers."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from outagemon.db.embedded import EmbeddedPostgres
from outagemon.testing.lab import Lab, LabUnavailable
from tests.dbpool import DatabasePool

# The machine's server, when one answers (CI's machines start one); override with this variable.
SERVER_DSN = os.environ.get("OUTAGEMON_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def short_tmp_dir() -> Path:
    """A directory the embedded server's user ('nobody' when we are root) can reach."""
    path = Path(tempfile.mkdtemp(prefix="om-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a database on a real PostgreSQL server for the whole session."""
    if asyncio.run(_answers(SERVER_DSN)):
        yield SERVER_DSN
        return
    server = EmbeddedPostgres(short_tmp_dir())
    dsn = asyncio.run(server.start())
    try:
        yield dsn
    finally:
        asyncio.run(server.stop())


def _with_database(dsn: str, name: str) -> str:
    base, _, query = dsn.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


@pytest.fixture(scope="session")
def database_pool(pg_server: str) -> Iterator[DatabasePool]:
    """New databases made ahead and dropped behind, off the tests' time (tests/dbpool.py)."""
    pool = DatabasePool(pg_server)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def fresh_db(pg_server: str, database_pool: DatabasePool) -> Iterator[str]:
    """DSN of a new, empty database, dropped after the test."""
    name = database_pool.take()
    yield _with_database(pg_server, name)
    database_pool.drop(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A network namespace to fault; the test skips, saying why, where none can be made."""
    try:
        the_lab = Lab()
        the_lab.open()
    except LabUnavailable as e:
        pytest.skip(f"no network lab here: {e}")
    try:
        yield the_lab
    finally:
        the_lab.close()
