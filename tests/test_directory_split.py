"""A big subscribers' CSV read by two processes loads exactly as one process reads it."""

from __future__ import annotations

import csv
import io
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from outagemon.core import directory
from outagemon.errors import TopologyError
from outagemon.sim import citygen

CITY = citygen.generate(aggregations=2, access_per_aggregation=10, subscribers_per_access=20)


def write(tmp_path: Path, rows: list[str], bom: bool = False, crlf: bool = False) -> Path:
    """The city's topology and a CSV of `rows` (lines without their ending)."""
    (tmp_path / "topology.yaml").write_text(CITY.topology_yaml(), encoding="utf-8")
    end = "\r\n" if crlf else "\n"
    subs = tmp_path / "subscribers.csv"
    subs.write_bytes(("\ufeff" if bom else "").encode() + end.join([*rows, ""]).encode())
    return subs


def city_rows() -> list[str]:
    return CITY.subscribers_csv().splitlines()


def fields(text: str) -> list[str]:
    return next(csv.reader([text]))


def line(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()


def load(tmp_path: Path, split: bool, monkeypatch: pytest.MonkeyPatch) -> directory.Loaded:
    monkeypatch.setattr(directory, "SPLIT_MIN_BYTES", 0 if split else 1 << 62)
    return directory.load(tmp_path / "topology.yaml", tmp_path / "subscribers.csv")


def outcome(loaded: directory.Loaded) -> tuple[Any, ...]:
    d = loaded.directory
    return list(d.subscribers), loaded.problems, sorted(d.topology.nodes), d.counts


def test_two_processes_load_what_one_loads_with_problems_and_duplicates_across_the_halves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = city_rows()
    header, body = rows[0], rows[1:]
    first, last = fields(body[5]), fields(body[-5])
    # Row numbers are line numbers here (no field spans lines): the header is row 1.
    body[-3] = line([first[0], "+79219999991", *last[2:4], "127.0.9.1"])  # account again
    body[-2] = line(["9000002", "+79219999992", *last[2:4], first[-1]])  # ip again
    body[3] = "9000003,12345,x,1,"  # a bad phone, first half
    body[-8] = "9000004,+79219999994,ул. Нигде 1,1,"  # no such building, second half
    body[-9] = "9000005,+79219999995"  # too few fields, second half
    body[-10] = line(["9000006", "+79219999996", *last[2:4], "not-an-ip"])
    subs = write(tmp_path, [header, *body], bom=True, crlf=True)
    one = load(tmp_path, False, monkeypatch)
    two = load(tmp_path, True, monkeypatch)
    assert (one.processes, two.processes) == (1, 2)
    assert outcome(two) == outcome(one)
    n = len(body) + 1
    said = [p.removeprefix(f"{subs}: ") for p in two.problems]
    assert f"row {n - 2}: account {first[0]!r} is already on row 7." in said
    assert f"row {n - 1}: ip {first[-1]} is already used by 'cpe:{first[0]}'." in said
    assert f"row {n - 8}: has 2 fields, the header 5." in said
    assert f"row {n - 9}: ip 'not-an-ip' is not an IP address." in said
    assert said[0] == "row 5: phones: '12345' is not a phone number."
    assert len(said) == 6, said


def test_a_split_inside_a_quoted_field_is_read_again_by_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = city_rows()
    header, body = rows[0], rows[1:]
    half = len(body) // 2
    # A field of many lines around the middle of the file: the first line end after the
    # middle is inside it, and a child reading from there would read the field's lines.
    many = "\n".join(f"x,{i},y" for i in range(len(body) // 2))
    body[half] = f'9000001,+79219999991,"{many}",1,'
    write(tmp_path, [header, *body])
    one = load(tmp_path, False, monkeypatch)
    two = load(tmp_path, True, monkeypatch)
    assert two.processes == 1
    assert outcome(two) == outcome(one)
    assert any(f"row {half + 2}: address holds a line break" in p for p in one.problems)


def test_where_no_process_can_start_or_it_fails_one_process_reads_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, city_rows())
    one = load(tmp_path, False, monkeypatch)

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    with monkeypatch.context() as m:
        m.setattr(subprocess, "Popen", refused)
        refused_load = load(tmp_path, True, m)
    with monkeypatch.context() as m:
        m.setattr(directory, "_CHILD", "import sys; sys.exit(3)")
        failed_load = load(tmp_path, True, m)
    with monkeypatch.context() as m:
        m.setattr(directory, "_CHILD", "import sys; sys.stdout.buffer.write(b'garbage')")
        garbled_load = load(tmp_path, True, m)
    for loaded in (refused_load, failed_load, garbled_load):
        assert loaded.processes == 1
        assert outcome(loaded) == outcome(one)


def test_with_one_core_one_process_reads_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, city_rows())
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert load(tmp_path, True, monkeypatch).processes == 1


@pytest.mark.parametrize("where", ["first half", "second half"])
def test_an_undecodable_byte_is_the_same_error_in_the_same_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    rows = city_rows()
    subs = write(tmp_path, rows)
    data = subs.read_bytes()
    at = data.index(rows[3 if where == "first half" else -3].encode())
    subs.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(TopologyError) as one:
        load(tmp_path, False, monkeypatch)
    with pytest.raises(TopologyError) as two:
        load(tmp_path, True, monkeypatch)
    assert two.value.problems == one.value.problems
    assert "cannot be read: 'utf-8' codec can't decode byte 0xff" in one.value.problems[0]


def test_a_broken_topology_is_its_error_and_the_child_is_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, city_rows())
    (tmp_path / "topology.yaml").write_text("nodes: [{id: a}, {id: a}]\n", encoding="utf-8")
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def recorded(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", recorded)
    with pytest.raises(TopologyError) as one:
        load(tmp_path, False, monkeypatch)
    with pytest.raises(TopologyError) as two:
        load(tmp_path, True, monkeypatch)
    assert two.value.problems == one.value.problems
    assert len(started) == 1 and started[0].returncode is not None


def test_a_header_without_the_columns_is_one_problem_when_split_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = city_rows()
    write(tmp_path, ["acct,phone,address,flat,ip", *rows[1:]])
    one = load(tmp_path, False, monkeypatch)
    two = load(tmp_path, True, monkeypatch)
    assert outcome(two) == outcome(one)
    assert len(one.problems) == 1 and "the header lacks column(s) account" in one.problems[0]


def test_a_load_in_a_thread_as_a_reload_is_split_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, city_rows())
    one = load(tmp_path, False, monkeypatch)
    got: list[directory.Loaded] = []
    thread = threading.Thread(target=lambda: got.append(load(tmp_path, True, monkeypatch)))
    thread.start()
    thread.join()
    assert got[0].processes == 2
    assert outcome(got[0]) == outcome(one)


def test_a_topology_changed_while_the_child_starts_is_read_by_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reload can race an edit of the topology: the child would place rows by another
    # topology than this process's. Here the child touches the file before it loads it.
    write(tmp_path, city_rows())
    one = load(tmp_path, False, monkeypatch)
    touch = "import os, sys; os.utime(sys.argv[1], ns=(10**9, 10**9)); "
    monkeypatch.setattr(directory, "_CHILD", touch + directory._CHILD)
    two = load(tmp_path, True, monkeypatch)
    assert two.processes == 1
    assert outcome(two) == outcome(one)
