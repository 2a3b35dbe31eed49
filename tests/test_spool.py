"""The journal file of writes waiting for the database: what it keeps over a crash, what
it gives back at start, and its bounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from outagemon.db.spool import FILE_NAME, Spool, SpoolError


def reopened(
    directory: Path, max_bytes: int = 64 << 20
) -> tuple[Spool, list[tuple[str, dict[str, object]]]]:
    spool = Spool(directory, max_bytes)
    replayed = spool.open()
    return spool, [(r.kind, r.data) for r in replayed.records]


def test_unacknowledged_writes_come_back_in_order_and_acknowledged_ones_do_not(
    tmp_path: Path,
) -> None:
    spool, found = reopened(tmp_path)
    assert found == []
    first = spool.append("opened", {"incident": 7}, precious=True)
    second = spool.append("eta", {"incident": 7, "eta": 1.5})
    third = spool.append("maintenance", {"id": 3}, precious=True)
    assert first is not None and second is not None and third is not None
    spool.sync()
    spool.done(second)
    spool.close()

    again, found = reopened(tmp_path)
    assert found == [("opened", {"incident": 7}), ("maintenance", {"id": 3})]
    # New writes continue after the old sequence numbers: an acknowledgement never
    # names a write it was not for.
    fourth = again.append("note", {"incident": 7})
    assert fourth is not None and fourth > third
    again.close()


def test_marks_survive_restarts_and_rewrites(tmp_path: Path) -> None:
    spool, _ = reopened(tmp_path)
    spool.mark("incident", 41)
    spool.mark("incident", 40)  # a mark never goes down
    spool.mark("maintenance", 3)
    spool.sync()
    spool.close()
    spool, _ = reopened(tmp_path)
    assert spool.marks == {"incident": 41, "maintenance": 3}
    spool.close()


def test_a_write_survives_sigkill_of_the_process_that_made_it(tmp_path: Path) -> None:
    """The ETA is on disk once sync() returns: a SIGKILL right after loses nothing."""
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from outagemon.db.spool import Spool
        s = Spool(Path({str(tmp_path)!r}))
        s.open()
        s.append("eta", {{"incident": 5, "eta": 99.0, "note": "кабель"}})
        s.sync()
        sys.stdout.write("synced\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert result.stdout == "synced\n"
    spool, found = reopened(tmp_path)
    assert found == [("eta", {"incident": 5, "eta": 99.0, "note": "кабель"})]
    spool.close()


def test_a_torn_last_line_is_dropped_and_counted_not_fatal(tmp_path: Path) -> None:
    spool, _ = reopened(tmp_path)
    spool.append("opened", {"incident": 1}, precious=True)
    spool.sync()
    spool.close()
    with (tmp_path / FILE_NAME).open("ab") as f:
        f.write(b'{"s": 9, "k": "eta", "d": {"inc')  # the power went in mid-write
    spool = Spool(tmp_path)
    replayed = spool.open()
    assert [r.kind for r in replayed.records] == ["opened"]
    assert replayed.damaged == 1
    spool.close()
    # The clean file written at start no longer holds the torn line.
    assert b'"inc\n' not in (tmp_path / FILE_NAME).read_bytes()
    spool, found = reopened(tmp_path)
    assert found == [("opened", {"incident": 1})]
    spool.close()


def test_past_its_bytes_only_precious_writes_are_kept(tmp_path: Path) -> None:
    spool, _ = reopened(tmp_path, max_bytes=2000)
    kept = [spool.append("nodes", {"incident": 1, "nodes": ["n" * 90]}) for _ in range(40)]
    assert None in kept, "a timeline write past the bound is left to memory"
    assert spool.pending_bytes <= 2000
    assert spool.refused == kept.count(None)
    opened = spool.append("opened", {"incident": 2, "nodes": ["x" * 500]}, precious=True)
    works = spool.append("maintenance", {"id": 1, "node": "sw"}, precious=True)
    assert opened is not None and works is not None, "an opened or works are never dropped"
    spool.sync()
    spool.close()
    spool, found = reopened(tmp_path, max_bytes=2000)
    assert ("opened", {"incident": 2, "nodes": ["x" * 500]}) in found
    assert ("maintenance", {"id": 1, "node": "sw"}) in found
    spool.close()


def test_the_file_shrinks_once_its_writes_are_acknowledged(tmp_path: Path) -> None:
    spool, _ = reopened(tmp_path)
    spool.mark("incident", 12)
    for i in range(3000):
        seq = spool.append("eta", {"incident": i, "note": "x" * 400})
        assert seq is not None
        spool.done(seq)
    spool.sync()
    size = os.path.getsize(tmp_path / FILE_NAME)
    assert size < 1 << 20, f"{size} bytes after everything was acknowledged"
    last = spool.append("opened", {"incident": 13}, precious=True)
    assert last is not None
    spool.close()
    spool, found = reopened(tmp_path)
    assert found == [("opened", {"incident": 13})]
    assert spool.marks == {"incident": 12}
    spool.close()


def test_two_daemons_cannot_share_one_journal(tmp_path: Path) -> None:
    first, _ = reopened(tmp_path)
    with pytest.raises(SpoolError, match="two daemons cannot share one state_dir"):
        Spool(tmp_path).open()
    first.close()
    second, _ = reopened(tmp_path)  # the lock went with the first one
    second.close()


def test_a_lone_surrogate_in_a_write_is_kept_not_a_crash(tmp_path: Path) -> None:
    spool, _ = reopened(tmp_path)
    assert spool.append("note", {"note": "bad \ud800 text"}) is not None
    spool.sync()
    spool.close()
    spool, found = reopened(tmp_path)
    assert found == [("note", {"note": "bad \ud800 text"})]
    spool.close()
