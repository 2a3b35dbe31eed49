"""Writes not yet in the database, on disk: an append-only, fsync'd file in state_dir.

Every write that matters after a crash (an incident opened, resolved, merged; an
engineer's ETA or note; planned works) is appended here as a JSON line before anyone is
told it happened, and acknowledged by a short line once the database has it. At start
the lines without an acknowledgement are read back and written again, so a SIGTERM, a
SIGKILL or an OOM kill while the database is away loses nothing that was acknowledged.
The highest incident and maintenance ids ever handed out are kept as marks, so ids
spoken to callers are never given to other incidents after a restart.

The file is bounded by bytes: past `max_bytes` of unacknowledged lines, writes that can
be lost (a timeline line) are no longer kept here, only in memory; precious ones (an
incident opened, planned works) always are. When everything is acknowledged and the file
has grown, it is rewritten with the marks only (a new file, fsync'd, renamed over).
Replayed writes must be idempotent: a crash between the database's commit and the
acknowledgement replays that one write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outagemon import logs
from outagemon.errors import OutagemonError

log = logs.get("outagemon.spool")

FILE_NAME = "journal.jsonl"
LOCK_NAME = "journal.lock"
# Rewrite the file once this much is acknowledged and nothing (or little) is pending.
COMPACT_AT = 1 << 20


@dataclass(slots=True)
class Record:
    """One write kept on disk: its sequence number, kind and data (JSON)."""

    seq: int
    kind: str
    data: dict[str, Any]
    precious: bool = False
    size: int = 0


@dataclass(slots=True)
class Replayed:
    """What the file held at start: the writes not acknowledged, in order, and the marks."""

    records: list[Record] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    damaged: int = 0  # lines that could not be read (a torn last line, a bad disk block)


class SpoolError(OutagemonError):
    """The journal file cannot be opened or written."""


class Spool:
    """The append-only journal of writes waiting for the database."""

    def __init__(self, directory: Path, max_bytes: int = 64 << 20, fsync: bool = True) -> None:
        self.path = directory / FILE_NAME
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.marks: dict[str, int] = {}
        self.pending: dict[int, Record] = {}
        self.pending_bytes = 0
        self.refused = 0  # writes past max_bytes that were not kept on disk
        self._fd = -1
        self._lock = -1
        self._seq = 0
        self._file_bytes = 0
        self._unsynced = False

    # -- life ------------------------------------------------------------------------

    def open(self) -> Replayed:
        """Lock and read the file; what it returns is to be written again."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.path.with_name(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                           0o600)  # fmt: skip
        except OSError as e:
            raise SpoolError(f"cannot open the journal {self.path}: {e.strerror}.") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            raise SpoolError(
                f"another outagemon uses {self.path}: two daemons cannot share one state_dir."
            ) from None
        self._lock = lock
        if not self.path.exists():
            self.path.touch(mode=0o600)
        replayed = self._read()
        for r in replayed.records:
            self.pending[r.seq] = r
            self.pending_bytes += r.size
        self.marks = dict(replayed.marks)
        if replayed.damaged:
            log.warning("spool.damaged_lines", path=str(self.path), lines=replayed.damaged)
        # Start from a clean file holding exactly what is pending (drops a torn tail).
        self._rewrite()
        return replayed

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.sync()
            os.close(self._fd)
            self._fd = -1
        if self._lock >= 0:
            os.close(self._lock)  # and with it the lock
            self._lock = -1

    def _read(self) -> Replayed:
        found = Replayed()
        records: dict[int, Record] = {}
        with open(self.path, "rb") as f:
            data = f.read()
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                entry = json.loads(line)
                if "a" in entry:
                    records.pop(int(entry["a"]), None)
                elif "m" in entry:
                    for name, value in dict(entry["m"]).items():
                        found.marks[name] = max(found.marks.get(name, 0), int(value))
                else:
                    seq = int(entry["s"])
                    records[seq] = Record(seq, str(entry["k"]), dict(entry["d"]),
                                          bool(entry.get("p")), len(line) + 1)  # fmt: skip
                    self._seq = max(self._seq, seq)
            except (ValueError, KeyError, TypeError):
                found.damaged += 1
        found.records = sorted(records.values(), key=lambda r: r.seq)
        return found

    # -- writing ---------------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any], precious: bool = False) -> int | None:
        """Keep a write on disk (fsync'd at the next `sync()`); its sequence number, or None
        when the file is full and the write is not precious (then it lives in memory only)."""
        if self._fd < 0:
            return None
        self._seq += 1
        line = _dumps({"s": self._seq, "k": kind, "d": data, "p": 1 if precious else 0})
        if not precious and self.pending_bytes + len(line) > self.max_bytes:
            self.refused += 1
            return None
        self._write(line)
        self.pending[self._seq] = Record(self._seq, kind, data, precious, len(line))
        self.pending_bytes += len(line)
        return self._seq

    def mark(self, name: str, value: int) -> None:
        """Raise a high-water mark (the highest incident id handed out, say)."""
        if value > self.marks.get(name, 0):
            self.marks[name] = value
            if self._fd >= 0:
                self._write(_dumps({"m": {name: value}}))

    def done(self, seq: int) -> None:
        """The database has this write (or refused it for good): it is not replayed."""
        record = self.pending.pop(seq, None)
        if record is None or self._fd < 0:
            return
        self.pending_bytes -= record.size
        self._write(_dumps({"a": seq}))
        if self._file_bytes >= COMPACT_AT and self._file_bytes > 4 * self.pending_bytes:
            self.sync()
            self._rewrite()

    def sync(self) -> None:
        """Make everything appended so far durable (one fsync for a batch of writes)."""
        if self._unsynced and self._fd >= 0:
            if self.fsync:
                os.fsync(self._fd)
            self._unsynced = False

    def _write(self, line: bytes) -> None:
        try:
            os.write(self._fd, line)
        except OSError as e:
            raise SpoolError(f"cannot write the journal {self.path}: {e.strerror}.") from None
        self._file_bytes += len(line)
        self._unsynced = True

    def _rewrite(self) -> None:
        """Replace the file by one holding the marks and the pending writes only."""
        tmp = self.path.with_name(self.path.name + ".new")
        lines = [_dumps({"m": self.marks})] if self.marks else []
        for r in sorted(self.pending.values(), key=lambda r: r.seq):
            lines.append(_dumps({"s": r.seq, "k": r.kind, "d": r.data, "p": int(r.precious)}))
        body = b"".join(lines)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.fsync:
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        new_fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        old, self._fd = self._fd, new_fd
        if old >= 0:
            os.close(old)
        self._file_bytes = len(body)
        self._unsynced = False


def _dumps(entry: dict[str, Any]) -> bytes:
    # ASCII with escapes: a lone surrogate that slipped through is written, not a crash.
    return json.dumps(entry, separators=(",", ":"), default=str).encode() + b"\n"
