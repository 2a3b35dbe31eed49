"""The event loop's lag in /metrics, the scheduler's reload off the loop, and the columnar
directory against the rules of the one it replaced."""

from __future__ import annotations

import asyncio
import pickle
import re
import time
from pathlib import Path

import pytest

from outagemon import config, daemon
from outagemon.core import directory
from outagemon.core.directory import Directory, HashIndex, Roster
from outagemon.core.topology import parse_text
from outagemon.metrics import LoopLag, Registry
from outagemon.probing.scheduler import Outcome, Retired, Scheduler
from outagemon.sim import citygen


def _buckets(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(
        r'^outagemon_loop_lag_seconds_bucket\{le="([^"]+)"\} (\d+)$', text, re.M)}  # fmt: skip


async def test_a_step_that_holds_the_loop_shows_in_the_lag_histogram() -> None:
    registry = Registry()
    lag = LoopLag(registry)
    task = asyncio.create_task(lag.run())
    try:
        deadline = time.monotonic() + 10
        while lag.histogram.count < 3 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        time.sleep(0.12)  # noqa: ASYNC251 (a step that holds the loop for 120 ms)
        while lag.worst < 0.1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    text = registry.render()
    # The timer due during the hold fired at least 100 ms late (120 ms less its interval).
    assert lag.worst >= 0.1, text
    assert "# TYPE outagemon_loop_lag_seconds histogram" in text
    buckets = _buckets(text)
    assert list(buckets)[-1] == "+Inf" and buckets["+Inf"] == lag.histogram.count
    counts = list(buckets.values())
    assert counts == sorted(counts)  # cumulative
    assert buckets["+Inf"] - buckets["0.1"] >= 1  # the hold, above 100 ms
    assert re.search(r"^outagemon_loop_lag_seconds_sum [0-9.e-]+$", text, re.M)
    assert re.search(r"^outagemon_loop_hold_max_seconds 0\.1\d*$", text, re.M)


class _Engine:
    on_result: object = None


class _Sending(_Engine):
    def __init__(self, sent: list[str]) -> None:
        self.send = sent.append


def test_a_planned_retarget_keeps_the_history_of_targets_that_stay() -> None:
    clock = [1000.0]
    outcomes: list[Outcome] = []
    s = Scheduler(_Engine(), outcomes.append, 10.0, 1000.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    s.set_targets(["127.0.0.2", "127.0.0.3"])
    kept = s.history["127.0.0.2"]
    s._result("127.0.0.3", None, "timeout")  # a loss before the reload
    plan = s.plan(["127.0.0.2", "127.0.0.4"], 5.0)
    assert s.interval == 10.0 and "127.0.0.3" in s.history  # planning changes nothing
    old = s.apply(plan)
    assert s.interval == 5.0
    assert s.history["127.0.0.2"] is kept
    assert sorted(t for _, t in s._heap) == ["127.0.0.2", "127.0.0.4"]
    assert all(1000.0 <= due < 1005.0 for due, _ in s._heap)
    assert {"127.0.0.2", "127.0.0.3"} in old  # the replaced set, to be freed in slices
    # The gone target's reply, in flight at the swap, is no outcome; the new target's
    # first result is, with a history of its own from then on.
    outcomes.clear()
    s._result("127.0.0.3", 0.001, None)
    s._result("127.0.0.4", None, "timeout")
    s._result("127.0.0.4", 0.001, None)
    assert [(o.target, o.ok, o.loss) for o in outcomes] == [
        ("127.0.0.4", False, 1.0), ("127.0.0.4", True, 0.5)]  # fmt: skip
    # The gone target's history is freed by the caller, a slice at a time, after the swap.
    retired = next(c for c in old if isinstance(c, Retired))
    assert len(retired) == 1 and "127.0.0.3" in s.history
    while retired:
        retired.release(1)
    assert "127.0.0.3" not in s.history and set(s.history) == {"127.0.0.2", "127.0.0.4"}
    s._result("127.0.0.3", 0.001, None)
    assert [o.target for o in outcomes] == ["127.0.0.4", "127.0.0.4"]


def test_the_gone_targets_are_made_a_set_with_the_plan_and_taken_as_it_is() -> None:
    s = Scheduler(_Engine(), lambda o: None, 10.0, 1000.0)  # type: ignore[arg-type]
    s.set_targets([f"127.0.0.{i}" for i in range(2, 12)])
    plan = s.plan(["127.0.0.2", "127.0.0.3"])
    assert plan.retiring == {f"127.0.0.{i}" for i in range(4, 12)} == set(plan.gone)
    s.apply(plan)
    assert s._retired is plan.retiring  # none retired before: no copy in the swap's step
    # With some still retired (a reload before the last one's release), added to them.
    again = s.plan(["127.0.0.2"])
    s.apply(again)
    assert s._retired is plan.retiring and "127.0.0.3" in s._retired
    assert s._retired == {f"127.0.0.{i}" for i in range(3, 12)}


def test_a_target_back_before_its_old_history_is_freed_starts_afresh() -> None:
    clock = [1000.0]
    outcomes: list[Outcome] = []
    s = Scheduler(_Engine(), outcomes.append, 10.0, 1000.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    s.set_targets(["127.0.0.2", "127.0.0.3"])
    for _ in range(3):
        s._result("127.0.0.3", None, "timeout")
    first = s.apply(s.plan(["127.0.0.2"]))  # 127.0.0.3 gone...
    second = s.apply(s.plan(["127.0.0.2", "127.0.0.3"]))  # ...and back, before a release
    s._result("127.0.0.3", 0.001, None)
    assert outcomes[-1].target == "127.0.0.3" and outcomes[-1].loss == 0.0  # no old losses
    for old in (first, second):  # the first reload's release leaves its new history be
        for retired in (c for c in old if isinstance(c, Retired)):
            while retired:
                retired.release(2_000)
    assert "127.0.0.3" in s.history and s.history["127.0.0.3"].count == 1
    # Not probed while gone: only what the schedule wants is sent.
    sent: list[str] = []
    s.engine = _Sending(sent)  # type: ignore[assignment]
    s.apply(s.plan(["127.0.0.2"]))
    clock[0] += 30.0
    s.tick()
    assert sent == ["127.0.0.2"]


async def test_a_reloads_retired_histories_are_freed_a_slice_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon, "RELEASE_GRACE", 0.0)
    monkeypatch.setattr(daemon, "RELEASE_SLICE", 2)
    s = Scheduler(_Engine(), lambda o: None, 10.0, 1000.0, clock=lambda: 1000.0)  # type: ignore[arg-type]
    everyone = [f"127.0.0.{i}" for i in range(2, 12)]
    s.set_targets(everyone)
    old = s.apply(s.plan(everyone[:5]))
    retired = next(c for c in old if isinstance(c, Retired))
    slices: list[int] = []
    release = Retired.release

    def counted(self: Retired, count: int) -> None:
        slices.append(len(self))
        release(self, count)

    monkeypatch.setattr(Retired, "release", counted)
    assert isinstance(retired, daemon.Releasable) and len(retired) == 5
    await asyncio.wait_for(daemon._release(old), 5)
    assert slices == [5, 3, 1]  # two at a time (each slice its own step of the loop)
    assert sorted(s.history) == everyone[:5]


def test_a_hash_index_finds_every_text_and_its_collisions() -> None:
    texts = [f"acct-{i}" for i in range(5000)] + ["acct-7"]
    index = HashIndex(texts, range(len(texts)), len(texts))
    for i in (0, 1, 4999):
        assert i in list(index.candidates(texts[i]))
    assert list(index.candidates("acct-7")) == [7, 5000]  # equal texts side by side, in order
    assert {7, 5000} <= set(index.collisions())
    assert list(index.candidates("nobody")) == []
    # Each key: the text's 32-bit hash and its position packed into a float's exact bits.
    assert list(index.keys) == sorted(
        float((hash(t) & 0xFFFFFFFF) << 21 | i) for i, t in enumerate(texts)
    )


def test_duplicate_accounts_and_ips_are_left_out_as_a_single_pass_would() -> None:
    topo = parse_text("nodes:\n  - {id: sw, kind: access, ip: 127.0.0.2, "
                      "serves: ['ул. Ленина, д. 1']}\n", Path("t.yaml"))  # fmt: skip
    subs, problems = directory.parse_csv(
        "account,phones,address,flat,ip\n"
        "1,+79210000001,Ленина 1,1,127.0.1.1\n"
        "2,+79210000002,Ленина 1,2,127.0.1.1\n"  # the ip of row 2: left out
        "2,+79210000003,Ленина 1,3,127.0.1.3\n"  # account 2 was left out: this one stays
        "1,+79210000004,Ленина 1,4,\n",  # account 1 again: left out
        Path("s.csv"),
        topo,
    )
    assert [s.account for s in subs] == ["1", "2"] and subs[1].row == 4
    assert [p.split(": ", 1)[1] for p in problems] == [
        "row 3: ip 127.0.1.1 is already used by 'cpe:1'.",
        "row 5: account '1' is already on row 2.",
    ]


def test_a_pickled_roster_answers_as_the_original() -> None:
    city = citygen.generate(aggregations=2, access_per_aggregation=5, subscribers_per_access=8)
    topo = parse_text(city.topology_yaml(), Path("city.yaml"))
    subs, problems = directory.parse_csv(city.subscribers_csv(), Path("s.csv"), topo)
    assert problems == []
    roster = Roster.of(subs)
    copy = pickle.loads(pickle.dumps(roster))
    for d in (Directory(directory.with_cpes(topo, roster), roster),
              Directory(directory.with_cpes(topo, copy), copy)):  # fmt: skip
        for row in city.rows:
            m = d.phone(row[1])
            assert m.subscriber is not None and m.subscriber.account == row[0]
            assert d.account(row[0]).nodes == m.nodes
    assert list(copy) == subs


def test_a_reload_s_thread_runs_at_a_short_switch_interval_and_gives_it_back(
    tmp_path: Path,
) -> None:
    # The loop's thread waits a switch interval (5 ms) before it asks for the lock, and
    # needs it twice a timer: beside the reload's pure Python its steps came 10-25 ms late.
    import sys

    from tests.test_newuser10_fixes import provider

    before = sys.getswitchinterval()
    seen = daemon._prepare(config.load(provider(tmp_path, "")),
                           lambda targets, probe: sys.getswitchinterval())[2]  # fmt: skip
    assert seen == daemon.RELOAD_SWITCH_INTERVAL < before
    assert sys.getswitchinterval() == before


def _two_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[citygen.City, directory.Directory, directory.Directory]:
    """A small city loaded twice (the replaced directory, the one in use), released at
    once two entries a step."""
    monkeypatch.setattr(daemon, "RELEASE_GRACE", 0.0)
    monkeypatch.setattr(daemon, "RELEASE_SLICE", 2)
    city = citygen.generate(aggregations=2, access_per_aggregation=3, subscribers_per_access=4)
    topo_file, subs_file = city.write(tmp_path)
    old = directory.load(topo_file, subs_file).directory
    return city, old, directory.load(topo_file, subs_file).directory


async def test_a_replaced_directory_is_freed_a_piece_at_a_time_the_new_one_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dropped whole, a million subscribers' counts and the roster's columns and indexes
    # were freed in the one step that let go of the directory (7-11 ms CPU).
    city, old, new = _two_loads(tmp_path, monkeypatch)
    counts, places = old.counts, old.subscribers.places
    assert len(counts) > 2 * daemon.RELEASE_SLICE
    steps = [0]

    async def count_steps() -> None:
        while True:
            steps[0] += 1
            await asyncio.sleep(0)

    counting = asyncio.create_task(count_steps())
    await asyncio.sleep(0)
    before = steps[0]
    await asyncio.wait_for(daemon._release([old]), 5)
    counting.cancel()
    assert counts == {} and places == []  # emptied, not only let go of
    assert steps[0] - before >= len(city.rows) // 2  # two entries a step
    for row in city.rows:  # the directory in use answers as before
        found = new.phone(row[1])
        assert found.subscriber is not None and found.subscriber.account == row[0]
    assert sum(new.counts.values()) == len(city.rows)


async def test_a_piece_the_directory_in_use_shares_with_the_replaced_one_is_not_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No load shares a piece today; should one ever, the release must not empty it
    # under the directory that answers callers.
    _, old, new = _two_loads(tmp_path, monkeypatch)
    new.counts = old.counts  # shared
    kept = dict(old.counts)
    await asyncio.wait_for(daemon._release([old], current=lambda: new), 5)
    assert new.counts == kept
    await asyncio.wait_for(daemon._release([old]), 5)  # nothing in use named: emptied
    assert new.counts == {}


def test_a_plan_sorts_its_targets_a_bounded_bucket_at_a_time() -> None:
    # Each list.sort() is one call into C, holding a reload's event loop throughout: a
    # million targets are sorted in buckets of about PLAN_SORT (4,096 held it 12-19 ms).
    import sys

    from outagemon.probing.scheduler import PLAN_SORT

    s = Scheduler(_Engine(), lambda o: None, 60.0, 1000.0, clock=lambda: 1000.0)  # type: ignore[arg-type]
    targets = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(50_000)]
    sorted_sizes: list[int] = []

    def watch(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") == "sort":
            sorted_sizes.append(len(arg.__self__))  # type: ignore[attr-defined]

    sys.setprofile(watch)
    try:
        plan = s.plan(targets)
    finally:
        sys.setprofile(None)
    assert sorted_sizes and max(sorted_sizes) <= 2 * PLAN_SORT  # buckets even by phase
    assert sum(sorted_sizes) == len(targets)
    assert plan.heap == sorted(plan.heap) and len(plan.heap) == len(targets)


def test_the_subscriber_file_is_decoded_a_bounded_piece_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each piece of the file read is decoded in one call into C, holding a reload's event
    # loop throughout: a MiB at a time held it 8-13 ms under load.
    import encodings.utf_8_sig

    decoded: list[int] = []
    decode = encodings.utf_8_sig.IncrementalDecoder._buffer_decode

    def measured(self: object, data: bytes, errors: str, final: bool) -> tuple[str, int]:
        decoded.append(len(data))
        return decode(self, data, errors, final)  # type: ignore[arg-type]

    monkeypatch.setattr(encodings.utf_8_sig.IncrementalDecoder, "_buffer_decode", measured)
    city = citygen.sized(20, 16_000)
    topo_file, subs_file = city.write(tmp_path)
    assert subs_file.stat().st_size > 1 << 20  # more than a MiB: read in several pieces
    loaded = directory.load(topo_file, subs_file)
    assert len(loaded.directory.subscribers) == 16_000 - len(loaded.problems)
    assert sum(decoded) == subs_file.stat().st_size
    assert max(decoded) <= 1 << 18


def test_no_shard_of_a_big_topology_grows_past_a_bounded_size() -> None:
    # A dict's growth rehashes all it holds in one call into C, holding a reload's event
    # loop throughout: a shard of 65,536 routers grew last in 2.4-2.9 ms (loaded).
    from outagemon.core.topology import Node, Topology

    nodes = [Node("core", "core", "127.0.0.2"), Node("sw", "access", "127.0.0.3", ("core",))]
    nodes += [
        Node(f"cpe:{r}", "cpe", f"127.2.{r >> 8 & 255}.{r & 255}", ("sw",), f"cpe:{r}")
        for r in range(60_000)
    ]
    t = Topology(nodes)
    for mapping in (t.nodes, t.by_ip):
        assert len(mapping) >= 60_000
        assert max(map(len, mapping.shards)) <= 40_000


def test_a_big_file_an_operator_wrote_is_decoded_a_bounded_piece_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The topology file is read by errors.read_text in a reload's thread: decoded at once,
    # 4.3 MiB held the interpreter's lock, and the event loop beside it, for 8.2 ms.
    import codecs
    import encodings.utf_8

    from outagemon.errors import read_text

    decoded: list[int] = []

    def measured(self: object, data: bytes, errors: str, final: bool) -> tuple[str, int]:
        decoded.append(len(data))
        return codecs.utf_8_decode(data, errors, final)

    path = tmp_path / "topology.yaml"
    path.write_bytes("- id: Узел №1, пр-т Космонавтов\r\n".encode() * 30_000)  # 1.5 MiB
    expected = path.read_text(encoding="utf-8")
    monkeypatch.setattr(encodings.utf_8.IncrementalDecoder, "_buffer_decode", measured)
    assert read_text(path) == expected  # line ends as Python's own reading gives them
    assert sum(decoded) >= path.stat().st_size  # (a character cut in two: decoded twice)
    assert max(decoded) <= (1 << 18) + 3
