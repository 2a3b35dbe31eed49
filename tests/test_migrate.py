"""Migrations on a real PostgreSQL: applied once, in order, under a lock, never edited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from outagemon.db import migrate
from outagemon.errors import MigrationError


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("select tablename from pg_tables where schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_the_shipped_migrations_build_the_schema_on_a_fresh_database(fresh_db: str) -> None:
    applied = await migrate.migrate(fresh_db)
    assert applied[0] == "0001_initial"
    assert {
        "node",
        "incident",
        "incident_event",
        "maintenance",
        "schema_migration",
    } <= await tables(fresh_db)


async def test_a_second_run_applies_nothing(fresh_db: str) -> None:
    await migrate.migrate(fresh_db)
    assert await migrate.migrate(fresh_db) == []


async def test_files_apply_in_version_order_each_in_its_transaction(
    fresh_db: str, tmp_path: Path
) -> None:
    write(tmp_path, "0002_b.sql", "alter table a add column y int;")
    write(tmp_path, "0001_a.sql", "create table a (x int);")
    write(tmp_path, "0003_broken.sql", "create table c (z int); select * from no_such_table;")
    with pytest.raises(MigrationError, match=r"0003_broken\.sql failed and was rolled back"):
        await migrate.migrate(fresh_db, tmp_path)
    # 1 and 2 stay applied; nothing of 3 is left behind.
    assert await tables(fresh_db) == {"a", "schema_migration"}
    (tmp_path / "0003_broken.sql").write_text("create table c (z int);")
    assert await migrate.migrate(fresh_db, tmp_path) == ["0003_broken"]


async def test_two_migrators_at_once_apply_each_file_exactly_once(
    fresh_db: str, tmp_path: Path
) -> None:
    # pg_sleep widens the window in which a second migrator, without the lock, would
    # also see the file as pending and fail on "relation already exists".
    write(tmp_path, "0001_slow.sql", "select pg_sleep(0.5); create table slow (x int);")
    write(tmp_path, "0002_log.sql", "create table log (x int); insert into log values (1);")
    results = await asyncio.gather(*(migrate.migrate(fresh_db, tmp_path) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("select count(*) from log") == 1
        assert await conn.fetchval("select count(*) from schema_migration") == 2
    finally:
        await conn.close()


async def test_an_edited_applied_file_is_refused(fresh_db: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "create table a (x int);")
    await migrate.migrate(fresh_db, tmp_path)
    write(tmp_path, "0001_a.sql", "create table a (x bigint);")
    write(tmp_path, "0002_b.sql", "create table b (x int);")
    with pytest.raises(MigrationError, match=r"0001_a.sql was changed after it was applied"):
        await migrate.migrate(fresh_db, tmp_path)
    assert "b" not in await tables(fresh_db), "nothing may be applied past a changed file"


def test_misnamed_and_duplicate_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "1_a.sql", "")
    write(tmp_path, "0002_b.sql", "")
    write(tmp_path, "0002_c.sql", "")
    with pytest.raises(MigrationError) as info:
        migrate.discover(tmp_path)
    text = str(info.value)
    assert "1_a.sql: a migration is named NNNN_name.sql" in text
    assert "version 2 is used by another file" in text


async def test_an_unreachable_server_is_one_sentence() -> None:
    with pytest.raises(Exception, match=r"cannot connect to PostgreSQL at postgresql://u:\*\*\*@"):
        await migrate.migrate("postgresql://u:hunter2@127.0.0.1:1/none")
