"""The ICMP engine: one socket per address family for every target, fping-style.

icmplib creates the sockets (a raw socket with CAP_NET_RAW, else the kernel's
unprivileged ICMP datagram socket) and supplies the exceptions. The hot path is ours: a
precomputed packet whose checksum is updated incrementally, a table of probes in flight
keyed by (identifier, sequence), one reader callback that drains the socket, expiry by a
periodic sweep over a deque ordered by deadline, and kernel filters so only echo replies
and errors reach Python. A reply counts only if it comes from the target and carries this
engine's random cookie, so another pinger on the host can never make a dead device alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from outagemon import logs

log = logs.get("outagemon.probe")

ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP6_UNREACH, ICMP6_TIME_EXCEEDED, ICMP6_ECHO, ICMP6_ECHO_REPLY = 1, 3, 128, 129
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_RCVBUFFORCE = 33
RCVBUF_BYTES = 32 * 2**20
COOKIE_LEN = 8
PAYLOAD_LEN = 16  # cookie + 8 bytes of padding: 24-byte ICMP messages

UNREACH_REASONS = {
    0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
    3: "port unreachable", 4: "fragmentation needed", 5: "source route failed",
    9: "network prohibited", 10: "host prohibited", 13: "communication prohibited",
}  # fmt: skip
UNREACH6_REASONS = {
    0: "no route", 1: "communication prohibited", 3: "address unreachable",
    4: "port unreachable", 5: "source address failed policy", 6: "reject route",
}  # fmt: skip

# target, rtt in seconds (None when lost), reason when lost ("timeout", "host unreachable", ...)
ResultCallback = Callable[[str, float | None, str | None], None]


class PermissionProblem(Exception):
    """No way to open an ICMP socket; str() says how to fix it."""


def permission_advice() -> str:
    lo, hi = _ping_group_range()
    return (
        "cannot open an ICMP socket: run as root, give the program CAP_NET_RAW "
        "(systemd: AmbientCapabilities=CAP_NET_RAW; by hand: setcap cap_net_raw+ep on the "
        "Python interpreter), or let this user's group use ping sockets with "
        f"sysctl -w net.ipv4.ping_group_range='0 2147483647' (now '{lo} {hi}')."
    )


def _ping_group_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 1, 0


def open_socket(family: int) -> tuple[socket.socket, bool]:
    """An ICMP socket for the family through icmplib, and whether it is raw (privileged)."""
    from icmplib import ICMPv4Socket, ICMPv6Socket
    from icmplib.exceptions import ICMPSocketError, SocketPermissionError

    cls = ICMPv4Socket if family == socket.AF_INET else ICMPv6Socket
    for privileged in (True, False):
        try:
            wrapper = cls(privileged=privileged)
        except SocketPermissionError:
            continue
        except ICMPSocketError as e:
            raise PermissionProblem(f"cannot open an ICMP socket: {e}.") from None
        # We take over icmplib's socket: detach it so its finaliser does not close it.
        sock: socket.socket = wrapper._sock
        wrapper._sock = None
        return sock, privileged
    raise PermissionProblem(permission_advice())


def _filter_v4() -> bytes:
    allowed = (1 << ICMP_ECHO_REPLY) | (1 << ICMP_UNREACH) | (1 << ICMP_TIME_EXCEEDED)
    return struct.pack("I", ~allowed & 0xFFFFFFFF)


def _filter_v6() -> bytes:
    words = [0xFFFFFFFF] * 8  # a set bit blocks that type
    for t in (ICMP6_ECHO_REPLY, ICMP6_UNREACH, ICMP6_TIME_EXCEEDED):
        words[t >> 5] &= ~(1 << (t & 31)) & 0xFFFFFFFF
    return struct.pack("8I", *words)


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


class Flight:
    __slots__ = ("sent", "target")

    def __init__(self, target: str, sent: float) -> None:
        self.target = target
        self.sent = sent


@dataclass
class Stats:
    sent: int = 0
    replies: int = 0
    lost: int = 0
    errors: int = 0  # ICMP unreachable / time exceeded about our probes
    foreign: int = 0  # echo replies that were not ours (other pingers, wrong cookie)
    malformed: int = 0  # truncated or nonsensical packets, counted and dropped
    late: int = 0  # replies that came after their probe expired
    send_failures: int = 0
    kernel_drops: int = 0  # read from /proc/net/raw when asked


class _Family:
    """One socket and its packet template."""

    def __init__(self, family: int, cookie: bytes, ident: int) -> None:
        self.family = family
        self.sock, self.raw = open_socket(family)
        self.sock.setblocking(False)
        self.v6 = family == socket.AF_INET6
        if self.raw:
            if self.v6:
                self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _filter_v6())
            else:
                self.sock.setsockopt(SOL_RAW, ICMP_FILTER, _filter_v4())
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if self.raw:
            self.ident = ident
        else:
            # The kernel puts its own identifier (the socket's "port") on datagram pings.
            self.sock.bind(("::" if self.v6 else "0.0.0.0", 0))
            self.ident = self.sock.getsockname()[1]
        echo = ICMP6_ECHO if self.v6 else ICMP_ECHO
        self.template = bytearray(struct.pack("!BBHHH", echo, 0, 0, 0, 0) + cookie)
        self.template += bytes(8 + PAYLOAD_LEN - len(self.template))
        # The checksum of the template with id = seq = 0; each packet adds its id and seq.
        # (The kernel computes ICMPv6 checksums itself, and datagram sockets' too.)
        self.base_sum = _ones_sum(bytes(self.template))

    def packet(self, ident: int, seq: int) -> bytearray:
        pkt = self.template[:]
        total = self.base_sum + ident + seq
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        struct.pack_into("!HHH", pkt, 2, ~total & 0xFFFF, ident, seq)
        return pkt

    def inode(self) -> int:
        return os.fstat(self.sock.fileno()).st_ino


class Engine:
    """Send echo requests to any number of targets over one socket per family.

    `on_result(target, rtt, reason)` is called once per probe, as soon as the reply or
    error arrives or the probe times out.
    """

    def __init__(self, on_result: ResultCallback, timeout: float = 1.0) -> None:
        self.on_result = on_result
        self.timeout = timeout
        self.cookie = os.urandom(COOKIE_LEN)
        self.stats = Stats()
        self._ident_base = int.from_bytes(os.urandom(2), "big")
        self._counter = 0
        self._flights: dict[int, Flight] = {}
        self._expiry: deque[tuple[float, int]] = deque()
        self._families: dict[int, _Family] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    # -- set-up ----------------------------------------------------------------------

    def open(self, families: tuple[int, ...] = (socket.AF_INET,)) -> None:
        """Open the sockets now (so permission problems show at start), and start reading."""
        self._loop = asyncio.get_running_loop()
        for family in families:
            self._family(family)
        self._schedule_sweep()

    def _family(self, family: int) -> _Family:
        fam = self._families.get(family)
        if fam is None:
            assert self._loop is not None, "Engine.open() first"
            fam = _Family(family, self.cookie, self._ident_base)
            self._families[family] = fam
            self._loop.add_reader(fam.sock.fileno(), self._drain, fam)
            log.info("probe.socket", family="ipv6" if fam.v6 else "ipv4", raw=fam.raw,
                     rcvbuf=fam.rcvbuf)  # fmt: skip
        return fam

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for fam in self._families.values():
            if self._loop is not None:
                self._loop.remove_reader(fam.sock.fileno())
            fam.sock.close()
        self._families.clear()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    # -- sending ---------------------------------------------------------------------

    def send(self, target: str, family: int | None = None) -> bool:
        """Send one echo request; False when the kernel refused it (counted, reported lost)."""
        if family is None:
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
        fam = self._families.get(family) or self._family(family)
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        seq = self._counter & 0xFFFF
        # A raw socket may use any identifier: 2^32 probes before a key repeats. A datagram
        # socket's is the kernel's: 65,536 probes.
        ident = (fam.ident + (self._counter >> 16)) & 0xFFFF if fam.raw else fam.ident
        key = (ident << 16) | seq
        now = time.monotonic()
        try:
            fam.sock.sendto(fam.packet(ident, seq), (target, 0))
        except OSError as e:
            self.stats.send_failures += 1
            self.on_result(target, None, f"send failed: {e.strerror}")
            return False
        self.stats.sent += 1
        self._flights[key] = Flight(target, now)
        self._expiry.append((now + self.timeout, key))
        return True

    # -- receiving -------------------------------------------------------------------

    def feed(self, data: bytes, source: str, v6: bool = False, raw: bool = True) -> None:
        """Handle one received packet (raw: IPv4 packets start with their IP header)."""
        (self._parse_v6 if v6 else self._parse_v4)(data, source, raw)

    def expect(self, target: str, ident: int, seq: int) -> None:
        """Record a probe as in flight without sending it (for tests of parsing)."""
        now = time.monotonic()
        self._flights[(ident << 16) | seq] = Flight(target, now)
        self._expiry.append((now + self.timeout, (ident << 16) | seq))

    def _drain(self, fam: _Family) -> None:
        recv = fam.sock.recvfrom
        parse = self._parse_v6 if fam.v6 else self._parse_v4
        raw = fam.raw
        while True:
            try:
                data, addr = recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats.malformed += 1  # e.g. a queued error on a datagram socket
                continue
            parse(data, addr[0], raw)

    def _parse_v4(self, data: bytes, source: str, raw: bool) -> None:
        offset = 0
        if raw:
            if len(data) < 20 or data[0] >> 4 != 4:
                self.stats.malformed += 1
                return
            offset = (data[0] & 0x0F) * 4
        if len(data) < offset + 8:
            self.stats.malformed += 1
            return
        kind = data[offset]
        if kind == ICMP_ECHO_REPLY:
            self._reply(data, offset, source)
        elif kind in (ICMP_UNREACH, ICMP_TIME_EXCEEDED):
            # The error quotes our packet: its IP header, then our ICMP header and payload.
            inner = offset + 8
            if len(data) < inner + 20 or data[inner] >> 4 != 4:
                self.stats.malformed += 1
                return
            inner_icmp = inner + (data[inner] & 0x0F) * 4
            if len(data) < inner_icmp + 8 or data[inner_icmp] != ICMP_ECHO:
                self.stats.foreign += 1
                return
            target = socket.inet_ntop(socket.AF_INET, data[inner + 16 : inner + 20])
            code = data[offset + 1]
            reason = (
                UNREACH_REASONS.get(code, f"unreachable (code {code})")
                if kind == ICMP_UNREACH
                else "time exceeded"
            )
            self._error(data, inner_icmp, target, reason)
        else:
            self.stats.foreign += 1  # only reachable without a kernel filter

    def _parse_v6(self, data: bytes, source: str, raw: bool) -> None:
        if len(data) < 8:
            self.stats.malformed += 1
            return
        kind = data[0]
        source = source.split("%", 1)[0]
        if kind == ICMP6_ECHO_REPLY:
            self._reply(data, 0, source)
        elif kind in (ICMP6_UNREACH, ICMP6_TIME_EXCEEDED):
            inner = 8
            if len(data) < inner + 48 or data[inner] >> 4 != 6 or data[inner + 40] != ICMP6_ECHO:
                self.stats.malformed += 1
                return
            target = socket.inet_ntop(socket.AF_INET6, data[inner + 24 : inner + 40])
            code = data[1]
            reason = (
                UNREACH6_REASONS.get(code, f"unreachable (code {code})")
                if kind == ICMP6_UNREACH
                else "time exceeded"
            )
            self._error(data, inner + 40, target, reason)
        else:
            self.stats.foreign += 1

    def _reply(self, data: bytes, offset: int, source: str) -> None:
        if data[offset + 8 : offset + 8 + COOKIE_LEN] != self.cookie:
            self.stats.foreign += 1
            return
        key = (
            (data[offset + 4] << 24)
            | (data[offset + 5] << 16)
            | (data[offset + 6] << 8)
            | data[offset + 7]
        )
        flight = self._flights.get(key)
        if flight is None:
            self.stats.late += 1
            return
        if flight.target != source and _canonical(source) != flight.target:
            self.stats.foreign += 1  # our cookie and key, but not from the target: ignore
            return
        del self._flights[key]
        self.stats.replies += 1
        self.on_result(flight.target, time.monotonic() - flight.sent, None)

    def _error(self, data: bytes, icmp: int, target: str, reason: str) -> None:
        quoted_cookie = data[icmp + 8 : icmp + 8 + COOKIE_LEN]
        if quoted_cookie and len(quoted_cookie) == COOKIE_LEN and quoted_cookie != self.cookie:
            self.stats.foreign += 1
            return
        key = int.from_bytes(data[icmp + 4 : icmp + 8], "big")
        flight = self._flights.get(key)
        if flight is None or (flight.target != target and _canonical(target) != flight.target):
            self.stats.foreign += 1
            return
        del self._flights[key]
        self.stats.errors += 1
        self.on_result(flight.target, None, reason)

    # -- expiry ----------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(min(0.05, self.timeout / 4), self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        expiry = self._expiry
        flights = self._flights
        while expiry and expiry[0][0] <= now:
            _, key = expiry.popleft()
            flight = flights.pop(key, None)
            if flight is not None:
                self.stats.lost += 1
                self.on_result(flight.target, None, "timeout")
        self._schedule_sweep()

    def kernel_drops(self) -> int:
        """Packets the kernel dropped on our sockets because the buffer was full."""
        total = 0
        for fam in self._families.values():
            if fam.raw:
                total += _raw_drops(fam.inode(), "/proc/net/raw6" if fam.v6 else "/proc/net/raw")
        self.stats.kernel_drops = total
        return total


def _canonical(address: str) -> str:
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(address))
    return address


def _raw_drops(inode: int, path: str) -> int:
    try:
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == str(inode):
                    return int(fields[-1])
    except (OSError, ValueError, StopIteration):
        pass
    return 0
