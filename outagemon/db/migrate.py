"""Forward-only schema migrations from migrations/NNNN_name.sql.

All of it happens on one dedicated connection holding a session advisory lock, so two
daemons starting at once apply each file exactly once; each file runs in its own
transaction together with its bookkeeping row, so a failed file leaves nothing half-done.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from outagemon import logs
from outagemon.db import store
from outagemon.errors import MigrationError

log = logs.get("outagemon.migrate")

# Arbitrary, fixed: the advisory lock key outagemon's migrators agree on ("outagemo").
LOCK_KEY = 0x6F75746167656D6F
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_dir() -> Path:
    """migrations/ inside an installed wheel, else at the top of the source tree."""
    package = Path(__file__).resolve().parent.parent  # outagemon/
    for candidate in (package / "migrations", package.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError(["outagemon's migrations directory is missing from this installation."])


def discover(directory: Path) -> list[Migration]:
    """Every migration file in version order; a misnamed or duplicated file is an error."""
    problems: list[str] = []
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        m = _NAME.match(path.name)
        if m is None:
            problems.append(f"{path}: a migration is named NNNN_name.sql (lower case).")
            continue
        version = int(m.group(1))
        if version in found:
            problems.append(f"{path}: version {version} is used by another file as well.")
            continue
        found[version] = Migration(version, m.group(2), path.read_text(encoding="utf-8"))
    if problems:
        raise MigrationError(problems)
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    migrations = discover(directory or default_dir())
    conn = await store.connection(dsn)
    try:
        await conn.execute("select pg_advisory_lock($1)", LOCK_KEY)
        try:
            return await _apply(conn, migrations)
        finally:
            await conn.execute("select pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(
        """
        create table if not exists schema_migration (
            version     integer primary key,
            name        text not null,
            checksum    text not null,
            applied_at  timestamptz not null default now()
        )
        """
    )
    applied = {
        r["version"]: r
        for r in await conn.fetch("select version, name, checksum from schema_migration")
    }
    known = {m.version for m in migrations}
    changed = [
        f"migration {m.version:04d}_{m.name}.sql was changed after it was applied "
        f"(checksum {applied[m.version]['checksum'][:12]} in the database, "
        f"{m.checksum[:12]} on disk); restore it and put the change in a new file."
        for m in migrations
        if m.version in applied and applied[m.version]["checksum"] != m.checksum
    ]
    if changed:
        raise MigrationError(changed)
    unknown = sorted(set(applied) - known)
    if unknown:
        # A newer outagemon migrated this database; running older code against it is allowed,
        # since migrations only add, but worth a line in the log.
        log.warning("migrate.database_is_newer", versions=unknown)
    done: list[str] = []
    for m in migrations:
        if m.version in applied:
            continue
        label = f"{m.version:04d}_{m.name}"
        try:
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "insert into schema_migration (version, name, checksum) values ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
        except asyncpg.PostgresError as e:
            raise MigrationError([f"migration {label}.sql failed and was rolled back: {e}"]) from e
        log.info("migrate.applied", migration=label)
        done.append(label)
    return done
