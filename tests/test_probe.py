"""The ICMP engine with real packets on loopback, and in a lab namespace with faults."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from outagemon.probing.engine import (
    COOKIE_LEN,
    Engine,
    PermissionProblem,
    ResultCallback,
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


# -- parsing raw bytes ---------------------------------------------------------------


def ipv4(src: str, dst: str, payload: bytes, proto: int = 1) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return header + payload


def icmp(kind: int, code: int, ident: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, ident, seq) + payload


def engine_expecting(target: str, ident: int = 7, seq: int = 9) -> tuple[Engine, list[Result]]:
    got: list[Result] = []
    engine = Engine(lambda t, r, x: got.append((t, r, x)), timeout=1.0)
    engine.expect(target, ident, seq)
    return engine, got


def test_a_valid_reply_with_our_cookie_counts() -> None:
    engine, got = engine_expecting("127.0.0.5")
    body = icmp(0, 0, 7, 9, engine.cookie + bytes(8))
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", body), "127.0.0.5")
    assert len(got) == 1 and got[0][0] == "127.0.0.5" and got[0][1] is not None


def test_a_reply_without_our_cookie_or_from_elsewhere_is_foreign() -> None:
    engine, got = engine_expecting("127.0.0.5")
    engine.feed(ipv4("127.0.0.5", "127.0.0.1", icmp(0, 0, 7, 9, os.urandom(16))), "127.0.0.5")
    body = icmp(0, 0, 7, 9, engine.cookie + bytes(8))
    engine.feed(ipv4("127.0.0.6", "127.0.0.1", body), "127.0.0.6")
    assert got == [] and engine.stats.foreign == 2
    assert engine.in_flight == 1


def test_unreachable_and_time_exceeded_are_losses_with_a_reason() -> None:
    for kind, code, reason in ((3, 1, "host unreachable"), (11, 0, "time exceeded")):
        engine, got = engine_expecting("127.0.0.5")
        quoted = ipv4("127.0.0.1", "127.0.0.5", icmp(8, 0, 7, 9, engine.cookie + bytes(8)))
        engine.feed(ipv4("127.0.0.254", "127.0.0.1", icmp(kind, code, 0, 0, quoted)), "127.0.0.254")
        assert got == [("127.0.0.5", None, reason)]
        assert engine.stats.errors == 1


def test_an_error_about_someone_elses_packet_is_foreign() -> None:
    engine, got = engine_expecting("127.0.0.5")
    quoted = ipv4("127.0.0.1", "127.0.0.5", icmp(8, 0, 7, 9, os.urandom(COOKIE_LEN) + bytes(8)))
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
    engine, got = engine_expecting("127.0.0.5")
    engine.feed(packet, "127.0.0.5")
    assert got == []
    assert engine.stats.malformed == 1


def test_malformed_ipv6_packets_are_counted_and_dropped() -> None:
    engine, got = engine_expecting("::1")
    for packet in (b"", b"\x81\x00", bytes([1, 0]) + bytes(20)):
        engine.feed(packet, "::1", v6=True, raw=True)
    assert got == [] and engine.stats.malformed == 3


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
