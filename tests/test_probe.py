"""The ICMP engine with real packets on loopback, and in a lab namespace with faults."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from outagemon.probing.engine import (
    AUTH_LEN,
    EXPIRE_SLICE,
    RCVBUF_BYTES,
    REPLY_BYTES,
    STAMP_LEN,
    Engine,
    PermissionProblem,
    ResultCallback,
    Stats,
    _Messages,
    open_socket,
)
from outagemon.sim import citygen
from outagemon.testing.lab import Lab

Result = tuple[str, float | None, str | None]


def have_raw_icmp() -> bool:
    try:
        sock, _ = open_socket(socket.AF_INET)
    except PermissionProblem:
        return False
    sock.close()
    return True


pytestmark = pytest.mark.skipif(not have_raw_icmp(), reason="no ICMP socket can be opened here")


async def ping_all(
    targets: list[str], wait: float = 1.0, lab: Lab | None = None, rounds: int = 1
) -> tuple[list[Result], Engine]:
    results: list[Result] = []
    expected = len(targets) * rounds
    done = asyncio.Event()

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        results.append((target, rtt, reason))
        if len(results) == expected:
            done.set()

    engine = Engine(on_result, timeout=wait)
    if lab is not None:
        with lab.entered():
            engine.open((socket.AF_INET, socket.AF_INET6))
    else:
        engine.open((socket.AF_INET, socket.AF_INET6))
    try:
        for _ in range(rounds):
            for i, target in enumerate(targets):
                engine.send(target)
                if i % 256 == 255:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.005)
        await asyncio.wait_for(done.wait(), wait + 10)
    finally:
        engine.close()
    return results, engine


async def test_ten_thousand_loopback_targets_all_answer_with_plausible_rtts() -> None:
    targets = [citygen.ip_of(i) for i in range(10_000)]
    results, engine = await ping_all(targets)
    answered = {t for t, rtt, _ in results if rtt is not None}
    assert answered == set(targets)
    assert all(0 < rtt < 0.5 for _, rtt, _ in results if rtt is not None)
    assert engine.stats.replies == 10_000 and engine.stats.lost == 0


async def test_ipv6_loopback_answers() -> None:
    results, _ = await ping_all(["::1"])
    assert results[0][0] == "::1" and results[0][1] is not None


async def test_dropped_targets_are_lost_after_the_timeout_and_others_answer(lab: Lab) -> None:
    lab.down("127.0.0.5", "127.0.0.7")
    started = time.monotonic()
    results, _ = await ping_all([f"127.0.0.{i}" for i in range(2, 10)], wait=0.5, lab=lab)
    by_target = {t: (rtt, reason) for t, rtt, reason in results}
    assert by_target["127.0.0.5"] == (None, "timeout")
    assert by_target["127.0.0.7"] == (None, "timeout")
    assert all(by_target[f"127.0.0.{i}"][0] is not None for i in (2, 3, 4, 6, 8, 9))
    assert time.monotonic() - started >= 0.5


async def test_a_thirty_percent_lossy_target_shows_about_thirty_percent_loss(lab: Lab) -> None:
    lab.loss(30, "127.0.0.9")
    results: list[Result] = []
    for _ in range(4):  # 200 probes, 50 at a time with distinct keys
        batch, _ = await ping_all(["127.0.0.9"] * 50, wait=0.3, lab=lab)
        results += batch
    lost = sum(1 for _, rtt, _ in results if rtt is None)
    assert len(results) == 200
    # binomial(200, 0.3): mean 60, sd 6.5; 35..85 is beyond 3.8 sd either side
    assert 35 <= lost <= 85, lost


@pytest.mark.skipif(shutil.which("fping") is None, reason="fping is not installed")
async def test_fping_on_the_same_targets_never_makes_a_dead_one_alive(lab: Lab) -> None:
    dead = [f"127.0.1.{i}" for i in range(1, 50)]
    alive = [f"127.0.2.{i}" for i in range(1, 50)]
    lab.down(*dead)
    fping = subprocess.Popen(  # noqa: ASYNC220 - started once, runs beside the test
        lab.command("fping", "-l", "-p", "20", "-i", "1", "-q", *alive, *dead),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)
        results, engine = await ping_all(alive + dead, wait=0.5, lab=lab, rounds=5)
    finally:
        fping.terminate()
        fping.wait()
    for target, rtt, _ in results:
        assert (rtt is None) == (target in dead), target
    assert engine.stats.foreign > 0, "fping's replies should have been seen and refused"


async def test_a_second_engine_with_colliding_keys_misattributes_nothing(lab: Lab) -> None:
    """Two engines with the same identifiers: one probes dead targets, the other live ones."""
    dead = [f"127.0.3.{i}" for i in range(1, 40)]
    alive = [f"127.0.4.{i}" for i in range(1, 40)]
    lab.down(*dead)
    results: dict[str, list[Result]] = {"dead": [], "alive": []}

    def collector(name: str) -> ResultCallback:
        return lambda t, r, x: results[name].append((t, r, x))

    engines = {name: Engine(collector(name), timeout=0.5) for name in results}
    engines["alive"]._ident_base = engines["dead"]._ident_base
    engines["alive"]._counter = engines["dead"]._counter
    with lab.entered():
        for e in engines.values():
            e.open()
    for d, a in zip(dead, alive, strict=True):
        engines["dead"].send(d)
        engines["alive"].send(a)
    await asyncio.sleep(1.0)
    for e in engines.values():
        e.close()
    assert {t for t, r, _ in results["dead"] if r is not None} == set()
    assert {t for t, r, _ in results["alive"] if r is not None} == set(alive)
    assert engines["dead"].stats.foreign >= len(alive)


def add_rules(lab: Lab, hook: str, rule: str) -> None:
    """One more nftables rule in the lab, in a table of the test's own (the lab's is
    replaced whenever it changes its faults)."""
    rules = (
        f"table inet test_{hook} {{\n  chain probes {{\n"
        f"    type filter hook {hook} priority -10;\n    {rule}\n  }}\n}}\n"
    )
    subprocess.run(lab.command("nft", "-f", "-"), input=rules, text=True, check=True)


async def test_a_genuine_unreachable_quotes_the_authenticator_and_ends_the_probe(
    lab: Lab,
) -> None:
    """Real sockets: Linux quotes the whole probe in its errors, so they still count at once."""
    rejected = "127.0.0.66"
    add_rules(
        lab,
        "input",
        f"ip daddr {rejected} icmp type echo-request reject with icmp type host-unreachable",
    )
    started = time.monotonic()
    results, engine = await ping_all([rejected, "127.0.0.67"], wait=5.0, lab=lab)
    assert time.monotonic() - started < 2.0, "the error, not the timeout, ended the probe"
    by_target = {t: (rtt, reason) for t, rtt, reason in results}
    assert by_target[rejected] == (None, "host unreachable")
    assert by_target["127.0.0.67"][0] is not None
    assert engine.stats.errors == 1 and engine.stats.hints == 0


def checksummed(kind: int, code: int, rest: bytes) -> bytes:
    body = struct.pack("!BBH", kind, code, 0) + rest
    padded = body + b"\0" * (len(body) % 2)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]


async def test_a_forged_unreachable_quoting_only_the_header_leaves_the_target_up(lab: Lab) -> None:
    """Real sockets: someone who saw one probe forges "host unreachable" for its target,
    quoting the 8-byte ICMP header as RFC 792 allows; then the genuine reply arrives."""
    target = "127.0.0.9"
    lab.down(target)  # hold the probe back, so the forgery arrives before the reply
    results: list[Result] = []
    replied = asyncio.Event()

    def on_result(t: str, rtt: float | None, reason: str | None) -> None:
        results.append((t, rtt, reason))
        replied.set()

    engine = Engine(on_result, timeout=5.0)
    with lab.entered():
        engine.open()
        # The onlooker: a packet socket sees the probe as it leaves, before nftables.
        onlooker = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        forger = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        network = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        onlooker.settimeout(5)
        assert engine.send(target)
        while True:
            seen = onlooker.recv(2048)
            ihl = (seen[0] & 0x0F) * 4
            if seen[9] == 1 and seen[16:20] == socket.inet_aton(target) and seen[ihl] == 8:
                break
        quote = seen[:ihl] + seen[ihl : ihl + 8]  # the IP header and the ICMP header only
        forger.sendto(checksummed(3, 1, bytes(4) + quote), ("127.0.0.1", 0))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if engine.stats.hints:
                break
        assert engine.stats.hints == 1 and results == [] and engine.in_flight == 1
        # The network delivers the held-back probe after all; the target answers it.
        lab.up(target)
        network.sendto(seen, (target, 0))
        await asyncio.wait_for(replied.wait(), 5)
    finally:
        engine.close()
        for sock in (onlooker, forger, network):
            sock.close()
    assert len(results) == 1
    assert results[0][0] == target and results[0][1] is not None and results[0][2] is None
    assert engine.stats.replies == 1 and engine.stats.errors == 0 and engine.stats.late == 0


async def test_a_big_expiry_is_called_lost_in_slices_all_of_it_in_order_once(lab: Lab) -> None:
    """A core failure: a sweep finds thousands of probes expired at once. They are called
    lost at most EXPIRE_SLICE per step of the event loop, in the order they were sent,
    every one of them, each once (one step for all of them held the loop ~50 ms)."""
    add_rules(lab, "input", "ip daddr 127.9.0.0/16 icmp type echo-request drop")
    targets = [f"127.9.{i // 250}.{i % 250 + 1}" for i in range(3000)]
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    step = 0  # the event loop's iterations, counted by a callback that runs once in each

    def count_steps() -> None:
        nonlocal step
        step += 1
        if not done.is_set():
            loop.call_soon(count_steps)

    results: list[tuple[int, str, float | None, str | None]] = []

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        results.append((step, target, rtt, reason))
        if len(results) >= len(targets):
            done.set()

    engine = Engine(on_result, timeout=0.3)
    with lab.entered():
        engine.open()
    try:
        assert engine.send_many(targets) == len(targets)  # all due in the same sweep
        loop.call_soon(count_steps)
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.2)  # and nothing more comes
    finally:
        engine.close()
    assert [t for _, t, _, _ in results] == targets
    assert {(rtt, reason) for _, _, rtt, reason in results} == {(None, "timeout")}
    per_step = collections.Counter(s for s, _, _, _ in results)
    assert max(per_step.values()) <= EXPIRE_SLICE
    assert len(per_step) >= len(targets) // EXPIRE_SLICE
    assert engine.stats.lost == len(targets) and engine.in_flight == 0


# -- parsing raw bytes ---------------------------------------------------------------


def ipv4(src: str, dst: str, payload: bytes, proto: int = 1) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return header + payload


def icmp(kind: int, code: int, ident: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, ident, seq) + payload


def engine_expecting(
    target: str, ident: int = 7, seq: int = 9
) -> tuple[Engine, list[Result], bytes]:
    got: list[Result] = []
    engine = Engine(lambda t, r, x: got.append((t, r, x)), timeout=1.0)
    auth = engine.expect(target, ident, seq)
    return engine, got, auth


def test_a_valid_reply_echoing_the_probes_authenticator_counts() -> None:
    engine, got, auth = engine_expecting("127.0.0.5")
    body = icmp(0, 0, 7, 9, auth + engine.tag)
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", body), "127.0.0.5")
    assert len(got) == 1 and got[0][0] == "127.0.0.5" and got[0][1] is not None


def test_a_reply_without_the_authenticator_or_from_elsewhere_is_foreign() -> None:
    engine, got, auth = engine_expecting("127.0.0.5")
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", icmp(0, 0, 7, 9, os.urandom(16))), "127.0.0.5")
    body = icmp(0, 0, 7, 9, auth + engine.tag)
    engine.feed(ipv4("127.0.0.6", "127.0.0.1", body), "127.0.0.6")
    assert got == [] and engine.stats.foreign == 2
    assert engine.in_flight == 1


def test_another_probes_authenticator_does_not_answer_this_one() -> None:
    """Whoever saw the probe to one target cannot answer for another target."""
    engine, got, _ = engine_expecting("127.0.0.5", seq=9)
    seen = engine.expect("127.0.0.6", 7, 10)  # a probe the forger saw, to its own router
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", icmp(0, 0, 7, 9, seen + engine.tag)), "127.0.0.5")
    quoted = ipv4("127.0.0.1", "127.0.0.5", icmp(8, 0, 7, 9, seen + engine.tag))
    engine.feed(ipv4("127.0.0.254", "127.0.0.1", icmp(3, 1, 0, 0, quoted)), "127.0.0.254")
    assert got == [] and engine.stats.foreign == 2 and engine.in_flight == 2


def test_every_probe_has_its_own_authenticator_and_keys_start_at_random() -> None:
    engine, _, first = engine_expecting("127.0.0.5", seq=1)
    second = engine.expect("127.0.0.5", 7, 2)
    assert len(first) == AUTH_LEN and first != second
    others = [Engine(lambda *a: None) for _ in range(4)]
    starts = {(e._ident_base << 32) | e._counter for e in [engine, *others]}
    assert len(starts) == 5  # 48 random bits each: equal ones would mean no randomness
    assert len({e.tag for e in [engine, *others]}) == 5


def test_a_late_reply_is_told_from_another_pingers() -> None:
    engine, _, auth = engine_expecting("127.0.0.5")
    engine._expire(float("inf"))
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", icmp(0, 0, 7, 9, auth + engine.tag)), "127.0.0.5")
    other = icmp(0, 0, 7, 9, auth + os.urandom(8))
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", other), "127.0.0.5")
    assert engine.stats.late == 1 and engine.stats.foreign == 1 and engine.stats.lost == 1


def test_expiry_with_a_limit_stops_mid_batch_and_goes_on_in_order_each_once() -> None:
    """The sweep's slices: at most `limit` called lost per call, a batch of keys split
    where the limit falls, the answered ones skipped, nothing reported twice."""
    got: list[Result] = []
    engine = Engine(lambda t, r, x: got.append((t, r, x)), timeout=1.0)
    targets = [f"127.0.{i // 200}.{i % 200 + 1}" for i in range(1000)]
    keys = [(7 << 16) | i for i in range(1000)]
    for target, key in zip(targets, keys, strict=True):
        engine.expect(target, 7, key & 0xFFFF)
    # The expiry as send_many() leaves it: one entry per batch of keys, after the singles.
    engine._expiry.clear()
    engine._expiry.extend([(1.0, keys[0]), (2.0, keys[1:300]), (3.0, keys[300:1000])])
    answered = {targets[5], targets[299], targets[300]}
    for t in answered:
        del engine._flights[keys[targets.index(t)]]
    calls = 0
    while engine._expire(float("inf"), 64):
        calls += 1
        assert len(got) == 64 * calls
    lost = [t for t in targets if t not in answered]
    assert [t for t, _, _ in got] == lost
    assert calls == len(lost) // 64
    assert engine.stats.lost == len(lost) and engine.in_flight == 0 and not engine._expiry
    assert engine._expire(float("inf"), 64) is False and len(got) == len(lost)


def test_a_failing_result_callback_mid_batch_loses_none_of_the_rest() -> None:
    got: list[str] = []

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        got.append(target)
        if target == "127.0.0.3":
            raise OverflowError("math range error")

    engine = Engine(on_result, timeout=1.0)
    for i in range(1, 6):
        engine.expect(f"127.0.0.{i}", 7, i)
    engine._expiry.clear()
    engine._expiry.append((1.0, [(7 << 16) | i for i in range(1, 6)]))
    with pytest.raises(OverflowError):
        engine._expire(float("inf"))
    engine._expire(float("inf"))
    assert got == [f"127.0.0.{i}" for i in range(1, 6)] and engine.in_flight == 0


def test_unreachable_and_time_exceeded_quoting_the_authenticator_are_losses() -> None:
    for kind, code, reason in ((3, 1, "host unreachable"), (11, 0, "time exceeded")):
        engine, got, auth = engine_expecting("127.0.0.5")
        quoted = ipv4("127.0.0.1", "127.0.0.5", icmp(8, 0, 7, 9, auth + engine.tag))
        engine.feed(ipv4("127.0.0.254", "127.0.0.1", icmp(kind, code, 0, 0, quoted)), "127.0.0.254")
        assert got == [("127.0.0.5", None, reason)]
        assert engine.stats.errors == 1


def test_an_error_quoting_only_the_header_is_a_hint_and_the_reply_still_counts() -> None:
    engine, got, auth = engine_expecting("127.0.0.5")
    for quote_len in (0, 4):  # RFC 792's 8 bytes, and a little more, but not the whole
        quoted = ipv4("127.0.0.1", "127.0.0.5", icmp(8, 0, 7, 9, auth[:quote_len]))
        engine.feed(ipv4("127.0.0.254", "127.0.0.1", icmp(3, 1, 0, 0, quoted)), "127.0.0.254")
    assert got == [] and engine.stats.hints == 2 and engine.in_flight == 1
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", icmp(0, 0, 7, 9, auth + engine.tag)), "127.0.0.5")
    assert len(got) == 1 and got[0][1] is not None and engine.stats.late == 0


def test_an_error_about_someone_elses_packet_is_foreign() -> None:
    engine, got, _ = engine_expecting("127.0.0.5")
    quoted = ipv4("127.0.0.1", "127.0.0.5", icmp(8, 0, 7, 9, os.urandom(AUTH_LEN) + bytes(8)))
    engine.feed(ipv4("127.0.0.254", "127.0.0.1", icmp(3, 1, 0, 0, quoted)), "127.0.0.254")
    quoted_udp = ipv4("127.0.0.1", "127.0.0.5", bytes(16), proto=17)
    engine.feed(ipv4("127.0.0.254", "127.0.0.1", icmp(3, 3, 0, 0, quoted_udp)), "127.0.0.254")
    assert got == [] and engine.stats.foreign == 2


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45",
        bytes(19),
        b"\x65" + bytes(30),  # IP version 6 in an IPv4 socket
        ipv4("127.0.0.5", "127.0.0.1", b"\x00\x00\x00"),  # ICMP shorter than its header
        ipv4("127.0.0.5", "127.0.0.1", icmp(3, 1, 0, 0, b"\x45\x00")),  # truncated quote
        b"\x4f" + bytes(20),  # header length beyond the packet
    ],
)
def test_malformed_and_truncated_packets_are_counted_and_dropped(packet: bytes) -> None:
    engine, got, _ = engine_expecting("127.0.0.5")
    engine.feed(packet, "127.0.0.5")
    assert got == []
    assert engine.stats.malformed == 1


def test_malformed_ipv6_packets_are_counted_and_dropped() -> None:
    engine, got, _ = engine_expecting("::1")
    for packet in (b"", b"\x81\x00", bytes([1, 0]) + bytes(20)):
        engine.feed(packet, "::1", v6=True, raw=True)
    assert got == [] and engine.stats.malformed == 3


async def test_a_receive_queue_is_called_small_only_when_it_is_for_the_targets_probed() -> None:
    """`probe.rcvbuf_small` was logged at every start without CAP_NET_ADMIN, for 8 targets
    too: now only when the queue cannot hold a reply from each target at once (2 KiB a
    reply, at most the 32 MiB asked for), once until it fits again."""
    engine = Engine(lambda *r: None)
    engine.open()
    try:
        fam = engine._family(socket.AF_INET)
        # As without CAP_NET_ADMIN: the kernel caps the queue at net.core.rmem_max, doubled.
        fam.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        fam.rcvbuf = fam.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        fits = fam.rcvbuf // REPLY_BYTES
        with capture_logs() as logs:
            engine.check_rcvbuf({socket.AF_INET: 8})
            engine.check_rcvbuf({socket.AF_INET: fits, socket.AF_INET6: 100_000})  # no v6 socket
            assert logs == []
            engine.check_rcvbuf({socket.AF_INET: 100_000})
            engine.check_rcvbuf({socket.AF_INET: 50_000})  # said once
        (said,) = logs
        assert said["event"] == "probe.rcvbuf_small" and said["log_level"] == "warning"
        assert (said["family"], said["targets"], said["effective"], said["wanted"]) == (
            "ipv4", 100_000, fam.rcvbuf, RCVBUF_BYTES)  # fmt: skip
        assert said["advice"] == f"sysctl -w net.core.rmem_max={RCVBUF_BYTES}"
        # A reload that brings the targets down to what fits, and then up again: said again.
        with capture_logs() as logs:
            engine.check_rcvbuf({socket.AF_INET: fits})
            engine.check_rcvbuf({socket.AF_INET: fits + 1})
        assert [(r["targets"], r["wanted"]) for r in logs] == [(fits + 1, (fits + 1) * REPLY_BYTES)]
    finally:
        engine.close()


# -- run(): the probe command's loop, without asyncio -----------------------------------


def run_engine(
    targets: list[str], on_result: ResultCallback, rcvbuf: int = 0, stats: list[Stats] | None = None
) -> Engine:
    engine = Engine(on_result, timeout=10.0)
    if stats is not None:
        stats.append(engine.stats)
    if rcvbuf:  # a small receive queue, as without CAP_NET_ADMIN and a raised rmem_max
        sock = engine._family(socket.AF_INET).sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        engine.run(targets)
    finally:
        engine.close()
    return engine


def test_run_sends_every_probe_before_reading_while_the_queue_has_room() -> None:
    """Reading replies between batches would hold up the sending (and with it the time a
    silent target's wait begins); they wait in the socket, timed by the kernel."""
    targets = [citygen.ip_of(i) for i in range(2000)]
    sent_at_result: list[int] = []
    stats: list[Stats] = []  # the engine's, once made
    engine = run_engine(targets, lambda *r: sent_at_result.append(stats[0].sent), stats=stats)
    assert len(sent_at_result) == len(targets)
    assert min(sent_at_result) == len(targets)
    assert engine.stats.replies == len(targets) and engine.stats.lost == 0


def test_run_times_a_reply_by_its_arrival_not_by_when_it_is_read() -> None:
    """A reply read late has the RTT it arrived with: here every reply but the first
    waits in the socket while the first one's handling takes 0.3 s."""
    rtts: list[float | None] = []

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        if not rtts:
            time.sleep(0.3)
        rtts.append(rtt)

    run_engine([citygen.ip_of(i) for i in range(1000)], on_result)
    timed = [r for r in rtts if r is not None]
    assert len(timed) == 1000
    assert max(timed[1:]) < 0.2, sorted(timed)[-5:]


def test_run_reads_on_while_sending_when_the_receive_queue_nears_its_limit() -> None:
    """A queue of 0.5 MiB holds about 600 loopback replies: 5,000 targets are all heard
    only if run() reads while it sends."""
    results: list[Result] = []
    targets = [citygen.ip_of(i) for i in range(5000)]
    engine = run_engine(targets, lambda *r: results.append(r), rcvbuf=256 * 1024)
    assert engine.stats.lost == 0 and engine.stats.replies == len(targets)
    assert sorted(t for t, _, _ in results) == sorted(targets)


def test_a_reply_without_an_arrival_stamp_is_timed_when_read_and_the_next_gets_one() -> None:
    """recvmmsg writes back each message's control length: a message that came without a
    stamp (or with another control message) is timed by its reading, and its slot's
    length is set back so the next packet in that slot can carry a stamp again."""
    engine = Engine(lambda *r: None)
    inbox = _Messages(socket.AF_INET, 2048, stamped=True)
    assert inbox.stamps is not None
    engine._stamp_offset = 1000.0
    words, at = inbox.msg_size // 8, inbox.control_at
    for i, (seconds, stamped) in enumerate([(1001, True), (1002, False), (1003, True)]):
        inbox.stamps[i * 4 + 1 : i * 4 + 4] = memoryview(
            struct.pack("=qqq", inbox.stamp_head, seconds, 500_000_000)
        ).cast("q")
        inbox.control_lengths[at + i * words] = STAMP_LEN if stamped else 0
    assert engine._arrivals(inbox, 3, now=7.0) == [1.5, 7.0, 3.5]
    assert inbox.control_lengths[at + 1 * words] == STAMP_LEN


# -- the command ---------------------------------------------------------------------


def probe_cmd(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(prefix or []), sys.executable, "-m", "outagemon", "probe", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_probe_command_prints_like_fping_and_exits_0_when_all_answer() -> None:
    result = probe_cmd("127.0.0.1", "::1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("127.0.0.1 is alive (") and lines[1].startswith("::1 is alive (")


def test_probe_command_exits_1_when_some_do_not_answer(lab: Lab) -> None:
    lab.down("127.0.0.5")
    result = probe_cmd("-c", "2", "-i", "50", "-t", "200", "--json", "127.0.0.4", "127.0.0.5",
                       prefix=lab.command())  # fmt: skip
    assert result.returncode == 1, result.stderr
    rows = {r["target"]: r for r in json.loads(result.stdout)}
    assert rows["127.0.0.4"]["received"] == 2 and rows["127.0.0.4"]["loss"] == 0.0
    assert rows["127.0.0.5"]["received"] == 0 and rows["127.0.0.5"]["reason"] == "timeout"


def test_probe_command_reads_targets_from_stdin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "outagemon", "probe", "-f", "-"],
        input="127.0.0.1\n# a comment\n127.0.0.2\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 2


def test_probe_command_prints_every_target_once_in_input_order(tmp_path: Path) -> None:
    """Literals, names and non-canonical spellings: each address once, where it first came."""
    many = [citygen.ip_of(i) for i in range(5000)]  # more than one output block
    names = ["localhost", "127.0.0.1", "127.1", *many, "::1", "0:0::1", many[5]]
    listing = tmp_path / "targets.txt"
    listing.write_text("\n".join(names) + "\n")
    result = probe_cmd("-t", "2000", "-f", str(listing))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["127.0.0.1", *many, "::1"]
    assert all(" is alive (" in line and line.endswith(" ms)") for line in lines)


def test_probe_command_reports_silent_targets_and_exits_1(lab: Lab, tmp_path: Path) -> None:
    many = [citygen.ip_of(i) for i in range(2000)]
    silent = set(many[::10])
    lab.down(*silent)
    listing = tmp_path / "targets.txt"
    listing.write_text("\n".join(many) + "\n")
    result = probe_cmd("-t", "300", "-f", str(listing), prefix=lab.command())
    assert result.returncode == 1, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert list(lines) == many
    assert {t for t, rest in lines.items() if rest == "is unreachable (timeout)"} == silent
    assert all(rest.startswith("is alive (") for t, rest in lines.items() if t not in silent)


def test_a_probe_the_kernel_refuses_mid_batch_is_lost_and_the_rest_go(lab: Lab) -> None:
    """sendmmsg stops at a refused packet; the probes after it are still sent."""
    refused = "127.0.0.77"
    add_rules(lab, "output", f"ip daddr {refused} icmp type echo-request drop")
    targets = [f"127.0.0.{i}" for i in range(70, 90)]
    result = probe_cmd("-t", "500", *targets, prefix=lab.command())
    assert result.returncode == 1, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert list(lines) == targets
    assert lines[refused] == "is unreachable (send failed: Operation not permitted)"
    assert all(lines[t].startswith("is alive (") for t in targets if t != refused)


def test_probe_command_starts_without_asyncio_logging_or_pathlib() -> None:
    """Its start-up is timed against fping's: what only other commands need stays out."""
    argv = [sys.executable, "-X", "importtime", "-m", "outagemon", "probe", "127.0.0.1"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "outagemon.probecmd" in imported
    assert not imported & {"asyncio", "logging", "structlog", "pathlib", "dataclasses"}


def test_probe_command_usage_errors_exit_2() -> None:
    assert probe_cmd().returncode == 2
    bad = probe_cmd("no-such-host.invalid")
    assert bad.returncode == 2 and "cannot be resolved" in bad.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_without_permission_the_command_says_how_to_fix_it() -> None:
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    if lo <= os.getegid() <= hi:
        pytest.skip("this group may use ping sockets here, so permission cannot be taken away")
    # CAP_NET_RAW taken out of the bounding set: even root cannot open a raw socket then.
    drop = ["setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw"]
    result = probe_cmd("127.0.0.1", prefix=drop)
    assert result.returncode == 2
    assert "CAP_NET_RAW" in result.stderr and "ping_group_range" in result.stderr
    assert "Traceback" not in result.stderr
