"""New, empty databases for tests, made ahead and dropped behind by a helper process.

On PostgreSQL a DROP DATABASE forces a checkpoint and a CREATE DATABASE copies the
template: together from half a second to several on a busy machine, which each test of
`fresh_db` used to wait for. The helper (this file, run as a program) keeps a few new
databases ready (`create database`, as before: empty, from template1) and drops used ones
while the next test runs; each test still gets a database nothing else has touched.
"""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
import tempfile
import uuid
from collections import deque
from pathlib import Path

import asyncpg

PREFIX = "om_test_"
DROPPERS = 3
TAKE_WITHIN = 120.0  # seconds: a database not made by then is an error, not a hang


class DatabasePool:
    """The test side: take() a new database's name, drop() it when done, close() at the
    end (which waits for every drop)."""

    def __init__(self, dsn: str, ahead: int = 2) -> None:
        # Its own log: our stderr belongs to whichever test pytest is capturing.
        self._log = Path(tempfile.mkstemp(prefix="om-dbpool-", suffix=".log")[1])
        with self._log.open("w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, __file__, dsn, str(ahead)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip

    def take(self) -> str:
        self._send("take")
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], TAKE_WITHIN)
        name = self._proc.stdout.readline().strip() if ready else ""
        if not name.startswith(PREFIX):
            raise RuntimeError(f"no new database within {TAKE_WITHIN} s: {self._failure()}")
        return name

    def drop(self, name: str) -> None:
        self._send(f"drop {name}")

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()  # the helper drops what is left, then ends
        code = self._proc.wait(timeout=300)
        if code != 0:
            raise RuntimeError(f"the database helper ended with {code}: {self._failure()}")
        self._log.unlink(missing_ok=True)

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the database helper is gone: {self._failure()}") from None

    def _failure(self) -> str:
        return self._log.read_text(errors="replace")[-3000:] or f"exit {self._proc.poll()}"


# -- the helper process -------------------------------------------------------------------


async def serve(dsn: str, ahead: int) -> None:
    """Answer each `take` with a new database's name, keep `ahead` made in advance, and
    drop each `drop NAME` on other connections (so a take never waits for a drop); at the
    end of input, drop the unused ones and everything queued, then return."""
    maker = await asyncpg.connect(dsn)
    # Drops at once share their checkpoints: a few side by side keep up with the tests.
    droppers = [await asyncpg.connect(dsn) for _ in range(DROPPERS)]
    ready: deque[str] = deque()
    drops: deque[str] = deque()
    takes = 0
    closed = False
    work, dropping = asyncio.Event(), asyncio.Event()

    async def read() -> None:
        nonlocal takes, closed
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command, _, name = line.decode().strip().partition(" ")
            if command == "take":
                takes += 1
                work.set()
            elif command == "drop" and name.startswith(PREFIX):
                drops.append(name)
                dropping.set()
        closed = True
        work.set()
        dropping.set()

    async def create() -> str:
        name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
        await maker.execute(f'create database "{name}"')
        return name

    async def make() -> None:
        nonlocal takes
        while True:
            work.clear()
            if takes:
                name = ready.popleft() if ready else await create()
                takes -= 1
                sys.stdout.write(name + "\n")
                sys.stdout.flush()
            elif closed:
                drops.extend(ready)
                ready.clear()
                dropping.set()
                return
            elif len(ready) < ahead:
                ready.append(await create())
            else:
                await work.wait()

    async def drop(dropper: asyncpg.Connection) -> None:
        while True:
            if drops:
                await dropper.execute(f'drop database if exists "{drops.popleft()}" with (force)')
            elif closed and made.done():
                return
            else:
                dropping.clear()
                await dropping.wait()

    reading = asyncio.create_task(read())
    made = asyncio.create_task(make())
    try:
        await asyncio.gather(made, *(drop(c) for c in droppers))
    finally:
        reading.cancel()
        for conn in (maker, *droppers):
            await conn.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
