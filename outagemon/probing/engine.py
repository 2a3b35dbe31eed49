"""The ICMP engine: one socket per address family for every target, fping-style.

The hot path: a packet template whose checksum is updated incrementally, a table of
probes in flight keyed by (identifier, sequence), one reader that drains the socket,
expiry by a sweep over a deque ordered by deadline, kernel filters so only echo replies
and errors reach Python, and for bursts many packets per system call (sendmmsg).

Spoofing: every probe carries its own authenticator, 8 bytes from the kernel's CSPRNG,
kept in its flight. A reply counts only if it comes from the target and echoes that
probe's authenticator; an ICMP error ends a probe only if it quotes the authenticator in
full. An error that quotes less (RFC 792 routers quote only the 8-byte header, and so
can anyone who saw one probe) is a hint: counted, and the probe waits for its reply or
its timeout. Identifiers and sequence numbers start at random. A process-wide tag after
the authenticator only tells our late replies from other pingers' (statistics).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence

# asyncio, structlog, ctypes and typing are imported where they are needed: the probe
# command runs without the first two, and its start-up time counts against fping's. (mypy
# takes any name TYPE_CHECKING as true.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio

ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP6_UNREACH, ICMP6_TIME_EXCEEDED, ICMP6_ECHO, ICMP6_ECHO_REPLY = 1, 3, 128, 129
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# Linux (asm-generic): each packet's receive time as a control message (struct timespec,
# CLOCK_REALTIME); the receive queue's bytes in use and its limit, the first two words.
SO_TIMESTAMPNS = 35
SO_MEMINFO = 55
STAMP_LEN = 32  # CMSG_SPACE(sizeof(struct timespec)) on 64-bit Linux
# run() reads replies only when a receive queue comes within this many bytes of its limit
# (a batch of replies takes ~213 kB on loopback), or when a probe is due to expire.
QUEUE_ROOM = 2**20
RCVBUF_BYTES = 32 * 2**20
# A reply's share of a receive queue (the kernel counts each packet's buffer): about
# 850 bytes on loopback, up to 2 KiB from a network card's. The queue is small for a
# family when it cannot hold a reply from each of its targets at once (a round arriving
# while the event loop is held), up to the RCVBUF_BYTES asked for.
REPLY_BYTES = 2048
SNDBUF_BYTES = 4 * 2**20  # a batch queued on a real interface waits for the NIC here
AUTH_LEN = 8  # the probe's authenticator, first in the payload
TAG_LEN = 8  # the process's tag, after it
PACKET_LEN = 8 + AUTH_LEN + TAG_LEN  # 24-byte ICMP messages
POOL = 4096  # authenticators drawn from the CSPRNG at once
BATCH = 256  # packets per sendmmsg call
_HEADER = struct.Struct("!HHH8s")  # checksum, identifier, sequence, authenticator
DRAIN_BUDGET = 512  # packets read from a socket per wakeup of the event loop
# Probes called lost per step of the event loop: each loss costs the monitor ~10-30 us
# (the hysteresis, the urgent re-probes it asks for), and one sweep may find a whole
# 50 ms of a core failure's probes expired (1,000 at 20,000 a second).
EXPIRE_SLICE = 256

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
    """An ICMP socket for the family, and whether it is raw (privileged): a raw socket with
    CAP_NET_RAW, else the kernel's unprivileged ICMP datagram socket."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    for kind, raw in ((socket.SOCK_RAW, True), (socket.SOCK_DGRAM, False)):
        try:
            return socket.socket(family, kind, proto), raw
        except PermissionError:
            continue
        except OSError as e:
            raise PermissionProblem(f"cannot open an ICMP socket: {e.strerror}.") from None
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


def _authenticators(n: int) -> tuple[bytes, list[int]]:
    """n authenticators from the kernel's CSPRNG, and each one's ones'-complement sum
    (congruent modulo 0xFFFF), so a packet's checksum costs an addition."""
    pool = os.urandom(AUTH_LEN * n)
    return pool, [v % 0xFFFF for v in struct.unpack(f"!{n}Q", pool)]


def _packed(family: int, target: str) -> bytes:
    """The target's address in network order (OSError when it is not an address)."""
    try:
        return socket.inet_pton(family, target.partition("%")[0])
    except OSError:
        # A name: resolved as sendto would, so the reply can be matched to it.
        info = socket.getaddrinfo(target, None, family, socket.SOCK_RAW)
        return socket.inet_pton(family, str(info[0][4][0]).partition("%")[0])


# A probe in flight: target, its address in network order (as replies and quotes carry
# it), the monotonic time it was sent, its authenticator: [0] to [3]. A tuple, not a
# class: one is made per probe.
Flight = tuple[str, bytes, float, bytes]


_STAT_FIELDS = (
    "sent",
    "replies",
    "lost",
    "errors",  # ICMP unreachable / time exceeded about our probes, authenticated
    "hints",  # errors about a probe in flight that do not quote its authenticator
    "foreign",  # packets not ours or not authentic (other pingers, forgeries)
    "malformed",  # truncated or nonsensical packets, counted and dropped
    "late",  # replies that came after their probe expired
    "send_failures",
    "kernel_drops",  # read from /proc/net/raw when asked
)


class Stats:
    """The engine's counters. A plain class: the dataclasses module would cost the probe
    command's start-up a few milliseconds of imports."""

    __slots__ = _STAT_FIELDS
    sent: int
    replies: int
    lost: int
    errors: int
    hints: int
    foreign: int
    malformed: int
    late: int
    send_failures: int
    kernel_drops: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"Stats({', '.join(f'{k}={v}' for k, v in self.as_dict().items())})"


def rcvbuf_wanted(targets: int) -> int:
    """The receive queue, in bytes, that holds a reply from each of `targets` at once (at
    most RCVBUF_BYTES: the most the engine asks for)."""
    return min(targets * REPLY_BYTES, RCVBUF_BYTES)


class _Family:
    """One socket and its packet template."""

    def __init__(self, family: int, tag: bytes, ident: int) -> None:
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
        self.rcvbuf_warned = False  # `Engine.check_rcvbuf` said it is small
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF_BYTES)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        if self.raw:
            self.ident = ident
        else:
            # The kernel puts its own identifier (the socket's "port") on datagram pings.
            self.sock.bind(("::" if self.v6 else "0.0.0.0", 0))
            self.ident = self.sock.getsockname()[1]
        self.echo = ICMP6_ECHO if self.v6 else ICMP_ECHO
        self.template = bytearray(struct.pack("!BBHHH", self.echo, 0, 0, 0, 0))
        self.template += bytes(AUTH_LEN) + tag
        # The checksum of the template with id = seq = 0 and no authenticator; each packet
        # adds its own. (The kernel computes ICMPv6 checksums itself, and datagram
        # sockets' too.)
        self.base_sum = _ones_sum(bytes(self.template))
        self.batch: _Messages | None = None  # sendmmsg, set up on first use
        self.inbox: _Messages | None = None  # recvmmsg, likewise
        self.stamped = False  # the kernel stamps each packet's arrival (run() only)

    def inode(self) -> int:
        return os.fstat(self.sock.fileno()).st_ino

    def stamp(self) -> bool:
        """Ask the kernel for each packet's arrival time; whether it will give it."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            return False
        return bool(self.sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS))

    def crowded(self) -> bool:
        """Whether the receive queue is within QUEUE_ROOM bytes of its limit, past which
        the kernel drops replies (True when the kernel cannot say)."""
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 8)
            used, limit = struct.unpack_from("=2I", info)
        except (OSError, struct.error):
            return True
        return bool(used + QUEUE_ROOM >= limit)


class _Messages:
    """sendmmsg(2)/recvmmsg(2) vectors for BATCH messages of one family, set up once:
    each message points at its slot in one data buffer and one address buffer, so a
    batch only fills or reads the slots."""

    def __init__(self, family: int, slot: int, stamped: bool = False) -> None:
        import ctypes

        class IOVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        class MsgHdr(ctypes.Structure):
            _fields_ = [
                ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int),
            ]  # fmt: skip

        class MMsgHdr(ctypes.Structure):
            _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

        libc = ctypes.CDLL(None, use_errno=True)
        self._ctypes = ctypes
        self.sendmmsg = libc.sendmmsg
        self.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
        self.sendmmsg.restype = ctypes.c_int
        self.recvmmsg = libc.recvmmsg
        self.recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                  ctypes.c_void_p)  # fmt: skip
        self.recvmmsg.restype = ctypes.c_int
        # sockaddr_in: family, port, address, 8 bytes of zeros; sockaddr_in6: family,
        # port, flow information, address, scope.
        v6 = family == socket.AF_INET6
        self.addr_format = "=HH4x16s4x" if v6 else "=HH4s8x"
        self.addr_len = struct.calcsize(self.addr_format)
        self.addr_at = 8 if v6 else 4  # where the address is in a sockaddr
        self.addr_size = 16 if v6 else 4
        self.slot = slot
        self.data = ctypes.create_string_buffer(BATCH * slot)
        self.addresses = ctypes.create_string_buffer(BATCH * self.addr_len)
        self._iov = (IOVec * BATCH)()
        self.msgs = (MMsgHdr * BATCH)()
        self.msg_size = ctypes.sizeof(MMsgHdr)
        self.len_at = MMsgHdr.len.offset
        data, addresses = ctypes.addressof(self.data), ctypes.addressof(self.addresses)
        iov = ctypes.addressof(self._iov)
        for i in range(BATCH):
            self._iov[i].base = data + i * slot
            self._iov[i].len = slot
            hdr = self.msgs[i].hdr
            hdr.name = addresses + i * self.addr_len
            hdr.namelen = self.addr_len
            hdr.iov = iov + i * ctypes.sizeof(IOVec)
            hdr.iovlen = 1
        self.base = ctypes.addressof(self.msgs)
        self.data_view = memoryview(self.data).cast("B")
        self.addr_view = memoryview(self.addresses).cast("B")
        self.lengths = memoryview(self.msgs).cast("B").cast("I")
        self.prepared = False
        # With arrival times: a control slot per message; `stamps` reads them as int64
        # (cmsg_len, level and type, tv_sec, tv_nsec), `control_lengths` the msg_controllen
        # the kernel writes back (size_t), at `control_at` in each message's words.
        self.stamps: memoryview | None = None
        if stamped:
            self._control = ctypes.create_string_buffer(BATCH * STAMP_LEN)
            control = ctypes.addressof(self._control)
            for i in range(BATCH):
                self.msgs[i].hdr.control = control + i * STAMP_LEN
                self.msgs[i].hdr.controllen = STAMP_LEN
            self.stamps = memoryview(self._control).cast("B").cast("q")
            self.control_lengths = memoryview(self.msgs).cast("B").cast("Q")
            self.control_at = (MMsgHdr.hdr.offset + MsgHdr.controllen.offset) // 8
            self.stamp_head = struct.unpack("=q", struct.pack("=ii", socket.SOL_SOCKET,
                                                              SO_TIMESTAMPNS))[0]  # fmt: skip

    def prepare(self, echo: int, tag: bytes) -> None:
        """Write what every outgoing slot shares, once: the sockaddr's family and the
        packet's type and tag (a batch then writes only the rest)."""
        if self.prepared:
            return
        family = socket.AF_INET6 if self.addr_size == 16 else socket.AF_INET
        for i in range(BATCH):
            struct.pack_into(self.addr_format, self.addresses, i * self.addr_len, family, 0,
                             bytes(self.addr_size))  # fmt: skip
            struct.pack_into("!BB6x8x8s", self.data, i * self.slot, echo, 0, tag)
        self.prepared = True

    def send(self, fd: int, start: int, count: int) -> tuple[int, int]:
        """Send messages start..start+count-1: (how many went, errno when one failed)."""
        sent = self.sendmmsg(fd, self.base + start * self.msg_size, count, 0)
        if sent <= 0:
            return 0, self._ctypes.get_errno() or errno.EIO
        return sent, 0

    def receive(self, fd: int) -> tuple[int, int]:
        """Read what is queued, up to BATCH messages: (how many, errno when none)."""
        got = self.recvmmsg(fd, self.base, BATCH, socket.MSG_DONTWAIT, None)
        if got < 0:
            return 0, self._ctypes.get_errno()
        return got, 0


def _batch_available() -> bool:
    try:
        import ctypes

        return hasattr(ctypes.CDLL(None), "sendmmsg")
    except (ImportError, OSError):
        return False


class Engine:
    """Send echo requests to any number of targets over one socket per family.

    `on_result(target, rtt, reason)` is called once per probe, as soon as the reply or
    authenticated error arrives or the probe times out.
    """

    def __init__(
        self,
        on_result: ResultCallback,
        timeout: float = 1.0,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.on_result = on_result
        # Called when on_result raised: the daemon stops (exit 1) rather than go on blind.
        self.on_failure = on_failure
        self.timeout = timeout
        self.tag = os.urandom(TAG_LEN)
        self.stats = Stats()
        # Unpredictable starts: nobody who has not seen a probe can guess a key.
        self._ident_base = int.from_bytes(os.urandom(2), "big")
        self._counter = int.from_bytes(os.urandom(4), "big")
        self._auth_pool, self._auth_sums = _authenticators(POOL)
        self._auth_cut: tuple[bytes, list[bytes]] = (b"", [])  # _auth_slices()
        self._auth_next = 0
        self._flights: dict[int, Flight] = {}
        # (deadline, key) per send(), (deadline, [key, ...]) per batch: a list per probe
        # would cost the daemon's send path an allocation.
        self._expiry: deque[tuple[float, int | list[int]]] = deque()
        self._families: dict[int, _Family] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._rest: asyncio.Handle | None = None  # the expiry's next step, when one is due
        self._read_on = False  # the last step put the expiry off to read on first
        self._batching: bool | None = None
        self._stamp_offset = 0.0  # CLOCK_REALTIME - CLOCK_MONOTONIC when run() began

    # -- set-up ----------------------------------------------------------------------

    def open(self, families: tuple[int, ...] = (socket.AF_INET,)) -> None:
        """Open the sockets now (so permission problems show at start), and start reading."""
        import asyncio

        self._loop = asyncio.get_running_loop()
        for family in families:
            self._family(family)
        self._schedule_sweep()

    def _family(self, family: int) -> _Family:
        fam = self._families.get(family)
        if fam is None:
            fam = _Family(family, self.tag, self._ident_base)
            self._families[family] = fam
            if self._loop is not None:  # else run() polls the sockets itself
                from outagemon import logs

                self._loop.add_reader(fam.sock.fileno(), self._drain_on_loop, fam)
                log = logs.get("outagemon.probe")
                log.info(
                    "probe.socket", family="ipv6" if fam.v6 else "ipv4", raw=fam.raw,
                    rcvbuf=fam.rcvbuf,
                )  # fmt: skip
        return fam

    def check_rcvbuf(self, targets: dict[int, int]) -> None:
        """Warn, once until it fits again, for each family whose receive queue cannot hold
        a reply from each of its targets at once (`targets`: family -> how many; said at
        start and at each reload). Without CAP_NET_ADMIN the kernel caps the queue at
        net.core.rmem_max (doubled): replies past it are dropped, and counted lost."""
        from outagemon import logs

        for family, fam in self._families.items():
            n = targets.get(family, 0)
            wanted = rcvbuf_wanted(n)
            if fam.rcvbuf >= wanted:
                fam.rcvbuf_warned = False
            elif not fam.rcvbuf_warned:
                fam.rcvbuf_warned = True
                logs.get("outagemon.probe").warning(
                    "probe.rcvbuf_small", family="ipv6" if fam.v6 else "ipv4", targets=n,
                    effective=fam.rcvbuf, wanted=wanted,
                    advice=f"sysctl -w net.core.rmem_max={wanted}",
                )  # fmt: skip

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._rest is not None:
            self._rest.cancel()
            self._rest = None
        for fam in self._families.values():
            if self._loop is not None:
                self._loop.remove_reader(fam.sock.fileno())
            fam.sock.close()
        self._families.clear()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    # -- sending ---------------------------------------------------------------------

    def _next_auth(self) -> bytes:
        i = self._auth_next
        if i == POOL:
            self._auth_pool, self._auth_sums = _authenticators(POOL)
            i = 0
        self._auth_next = i + 1
        return self._auth_pool[i * AUTH_LEN : (i + 1) * AUTH_LEN]

    def _auth_slices(self) -> list[bytes]:
        """The pool's authenticators one by one, cut once a pool (send_many's)."""
        pool = self._auth_pool
        if self._auth_cut[0] is not pool:
            self._auth_cut = (pool, [pool[j : j + AUTH_LEN] for j in range(0, len(pool), AUTH_LEN)])
        return self._auth_cut[1]

    def send(self, target: str, family: int | None = None) -> bool:
        """Send one echo request; False when the kernel refused it (counted, reported lost)."""
        if family is None:
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
        fam = self._families.get(family) or self._family(family)
        self._counter = counter = (self._counter + 1) & 0xFFFFFFFF
        seq = counter & 0xFFFF
        # A raw socket may use any identifier: 2^32 probes before a key repeats. A datagram
        # socket's is the kernel's: 65,536 probes.
        ident = (fam.ident + (counter >> 16)) & 0xFFFF if fam.raw else fam.ident
        key = (ident << 16) | seq
        i = self._auth_next
        if i == POOL:
            self._auth_pool, self._auth_sums = _authenticators(POOL)
            i = 0
        self._auth_next = i + 1
        auth = self._auth_pool[i * AUTH_LEN : i * AUTH_LEN + AUTH_LEN]
        pkt = fam.template[:]
        total = (fam.base_sum + ident + seq + self._auth_sums[i]) % 0xFFFF or 0xFFFF
        _HEADER.pack_into(pkt, 2, ~total & 0xFFFF, ident, seq, auth)
        now = time.monotonic()
        try:
            try:
                packed = socket.inet_pton(family, target)
            except OSError:
                packed = _packed(family, target)  # a scoped address, or a name
            fam.sock.sendto(pkt, (target, 0))
        except (OSError, UnicodeError) as e:
            self.stats.send_failures += 1
            self.on_result(target, None, f"send failed: {getattr(e, 'strerror', None) or e}")
            return False
        self.stats.sent += 1
        self._flights[key] = (target, packed, now, auth)
        self._expiry.append((now + self.timeout, key))
        return True

    def send_many(self, targets: Sequence[str]) -> int:
        """Send one echo request to each target, up to BATCH per system call (sendmmsg)
        where the platform has it; returns how many were sent. A probe the kernel
        refuses is counted and reported lost, as with send()."""
        if self._batching is None:
            self._batching = _batch_available()
        if not self._batching:
            return sum(self.send(t) for t in targets)
        sent = 0
        pending: list[tuple[int, str, bytes, bytes]] = []
        current = -1
        fam: _Family | None = None
        batch: _Messages | None = None
        inet_pton = socket.inet_pton
        pack_header = _HEADER.pack_into
        counter = self._counter
        auths, sums, i = self._auth_slices(), self._auth_sums, self._auth_next
        ident = base_sum = 0
        raw = True
        data = addresses = memoryview(b"")
        addr_len = addr_size = 0
        slot = BATCH  # the slot in the batch the next packet takes
        off = at = 0  # where its header goes in the data, its address in the addresses
        v4, v6 = socket.AF_INET, socket.AF_INET6
        for target in targets:
            family = v6 if ":" in target else v4
            if family != current or slot == BATCH:
                if fam is not None and batch is not None and pending:
                    sent += self._flush(fam, batch, pending)
                    pending = []
                current = family
                fam = self._families.get(family) or self._family(family)
                batch = fam.batch = fam.batch or _Messages(family, PACKET_LEN)
                batch.prepare(fam.echo, self.tag)
                ident, raw, base_sum = fam.ident, fam.raw, fam.base_sum
                data, addresses = batch.data_view, batch.addr_view
                addr_len, addr_size = batch.addr_len, batch.addr_size
                slot, off, at = 0, 2, batch.addr_at
            try:
                packed = inet_pton(family, target)
            except OSError:
                try:
                    packed = _packed(family, target)  # a scoped address, or a name
                except (OSError, UnicodeError) as e:
                    self.stats.send_failures += 1
                    reason = getattr(e, "strerror", None) or e
                    self.on_result(target, None, f"send failed: {reason}")
                    continue
            counter = (counter + 1) & 0xFFFFFFFF  # keys as in send()
            seq = counter & 0xFFFF
            key_ident = (ident + (counter >> 16)) & 0xFFFF if raw else ident
            if i == POOL:
                self._auth_pool, self._auth_sums = _authenticators(POOL)
                auths, sums, i = self._auth_slices(), self._auth_sums, 0
            auth = auths[i]
            total = (base_sum + key_ident + seq + sums[i]) % 0xFFFF or 0xFFFF
            i += 1
            pack_header(data, off, ~total & 0xFFFF, key_ident, seq, auth)
            addresses[at : at + addr_size] = packed
            pending.append(((key_ident << 16) | seq, target, packed, auth))
            slot += 1
            off += PACKET_LEN
            at += addr_len
        self._counter, self._auth_next = counter, i
        if fam is not None and batch is not None and pending:
            sent += self._flush(fam, batch, pending)
        return sent

    def _flush(
        self, fam: _Family, batch: _Messages, pending: list[tuple[int, str, bytes, bytes]]
    ) -> int:
        """Send the batch's packets. Their flights are recorded first: with run(), replies
        are read on another thread while this one is still in sendmmsg."""
        flights = self._flights
        now = time.monotonic()
        for key, target, packed, auth in pending:
            flights[key] = (target, packed, now, auth)
        self._expiry.append((now + self.timeout, [p[0] for p in pending]))
        start, count, failed = 0, len(pending), 0
        fd = fam.sock.fileno()
        waited = False
        while start < count:
            went, error = batch.send(fd, start, count - start)
            start += went
            if error in (errno.EAGAIN, errno.ENOBUFS) and not waited:
                # The send buffer is full (a real interface drains it at its own pace):
                # wait once for room, briefly, rather than call the probes lost.
                waiter = select.poll()
                waiter.register(fd, select.POLLOUT)
                waiter.poll(100)
                waited = True
                continue
            waited = False
            if error:
                # The kernel refused this packet: lost, like a failed sendto; go on after it.
                key, target, _, _ = pending[start]
                flights.pop(key, None)
                failed += 1
                self.stats.send_failures += 1
                self.on_result(target, None, f"send failed: {os.strerror(error)}")
                start += 1
        self.stats.sent += count - failed
        return count - failed

    # -- receiving -------------------------------------------------------------------

    def feed(self, data: bytes, source: str, v6: bool = False, raw: bool = True) -> None:
        """Handle one received packet (raw: IPv4 packets start with their IP header)."""
        if v6:
            self._parse_v6(data, socket.inet_pton(socket.AF_INET6, source.partition("%")[0]))
        else:
            self._parse_v4(data, socket.inet_pton(socket.AF_INET, source), raw)

    def expect(self, target: str, ident: int, seq: int) -> bytes:
        """Record a probe as in flight without sending it (for tests of parsing); returns
        the authenticator its reply must echo."""
        now = time.monotonic()
        auth = self._next_auth()
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        key = (ident << 16) | seq
        self._flights[key] = (target, _packed(family, target), now, auth)
        self._expiry.append((now + self.timeout, key))
        return auth

    def _drain(self, fam: _Family) -> bool:
        """Read and handle what the socket holds, up to DRAIN_BUDGET packets; True when
        it stopped at the budget (more may be waiting)."""
        if self._batching is None:
            self._batching = _batch_available()
        if self._batching:
            return self._drain_batched(fam)
        recvfrom = fam.sock.recvfrom
        inet_pton = socket.inet_pton
        family = fam.family
        for _ in range(DRAIN_BUDGET):
            try:
                data, addr = recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self.stats.malformed += 1  # e.g. a queued error on a datagram socket
                continue
            source = inet_pton(family, addr[0].partition("%")[0])
            if fam.v6:
                self._parse_v6(data, source)
            else:
                self._parse_v4(data, source, fam.raw)
        return True

    def _failed(self, e: Exception) -> None:
        """on_result raised: said loudly, and passed on to whoever can stop the daemon."""
        from outagemon import logs

        logs.get("outagemon.probe").error("probe.result_failed", error=repr(e), exc_info=e)
        if self.on_failure is not None:
            self.on_failure(e)

    def _drain_on_loop(self, fam: _Family) -> None:
        """The event loop's reader: a failing result callback is said loudly and passed on
        to whoever can stop the daemon, never lost inside the loop's handler."""
        try:
            self._drain(fam)
        except Exception as e:
            self._failed(e)

    def _drain_batched(self, fam: _Family) -> bool:
        """Up to BATCH packets per system call (recvmmsg). An echo reply to a raw IPv4
        socket, nearly every packet, is matched here; anything else is parsed in full."""
        inbox = fam.inbox
        if inbox is None:
            inbox = fam.inbox = _Messages(fam.family, 2048)
        fd = fam.sock.fileno()
        flights, on_result = self._flights, self.on_result
        data, names, lengths = inbox.data_view, inbox.addr_view, inbox.lengths
        slot, stride, len_at = inbox.slot, inbox.msg_size // 4, inbox.len_at // 4
        at, alen, asize = inbox.addr_at, inbox.addr_len, inbox.addr_size
        raw_v4 = fam.raw and not fam.v6
        reply_len = 20 + PACKET_LEN  # an IPv4 header without options, then our message
        # Arrival times (run()): the kernel's CLOCK_REALTIME stamp, made monotonic with the
        # offset taken when run() began; a missing or implausible one (a clock stepped
        # meanwhile) falls back to the time of reading, as without stamps.
        stamps = inbox.stamps
        # At most DRAIN_BUDGET packets a wakeup: the selector calls again at once if more
        # wait, after the loop's other work, so a flood of ICMP cannot starve /check.
        for _ in range(DRAIN_BUDGET // BATCH):
            got, error = inbox.receive(fd)
            if not got:
                if error == errno.EINTR:
                    continue
                if error not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.stats.malformed += 1  # e.g. a queued error on a datagram socket
                return False  # the reader is called again while anything is queued
            now = time.monotonic()
            replies = 0
            arrivals = self._arrivals(inbox, got, now) if stamps is not None else None
            for i in range(got):
                n = lengths[i * stride + len_at]
                packet = bytes(data[i * slot : i * slot + n])
                arrived = now if arrivals is None else arrivals[i]
                if raw_v4 and n == reply_len and packet[0] == 0x45 and packet[20] == 0:
                    key = int.from_bytes(packet[24:28], "big")
                    flight = flights.get(key)
                    if (
                        flight is not None
                        and packet[28:36] == flight[3]
                        and packet[12:16] == flight[1]
                    ):
                        del flights[key]
                        replies += 1
                        sent = flight[2]
                        if not sent <= arrived <= now:
                            arrived = now
                        on_result(flight[0], arrived - sent, None)
                        continue
                source = bytes(names[i * alen + at : i * alen + at + asize])
                if fam.v6:
                    self._parse_v6(packet, source, arrived, now)
                else:  # raw: its header names the source
                    self._parse_v4(packet, source, fam.raw, arrived, now)
            self.stats.replies += replies
            if got < BATCH:
                return False  # drained; anything newer wakes the reader again
        return True

    def _arrivals(self, inbox: _Messages, got: int, now: float) -> list[float]:
        """The monotonic arrival time of each of the `got` messages recvmmsg read, from the
        kernel's stamps (read in bulk: per packet they cost the reading a third more);
        `now` for one without a stamp, whose control length is set back for the next."""
        stamps = inbox.stamps
        assert stamps is not None
        words, at = inbox.msg_size // 8, inbox.control_at
        lengths = inbox.control_lengths[at : at + got * words : words].tolist()
        heads = stamps[1 : got * 4 : 4].tolist()
        offset = self._stamp_offset
        seconds, nanoseconds = stamps[2 : got * 4 : 4].tolist(), stamps[3 : got * 4 : 4].tolist()
        arrivals = [s + ns * 1e-9 - offset for s, ns in zip(seconds, nanoseconds, strict=True)]
        if lengths.count(STAMP_LEN) != got or heads.count(inbox.stamp_head) != got:
            for i in range(got):
                if lengths[i] != STAMP_LEN or heads[i] != inbox.stamp_head:
                    arrivals[i] = now
                    inbox.control_lengths[at + i * words] = STAMP_LEN
        return arrivals

    def _parse_v4(
        self, data: bytes, source: bytes, raw: bool, arrived: float = 0.0, now: float = 0.0
    ) -> None:
        offset = 0
        if raw:
            if len(data) < 20 or data[0] >> 4 != 4:
                self.stats.malformed += 1
                return
            offset = (data[0] & 0x0F) * 4
            source = data[12:16]
        if len(data) < offset + 8:
            self.stats.malformed += 1
            return
        kind = data[offset]
        if kind == ICMP_ECHO_REPLY:
            self._reply(data, offset, source, arrived, now)
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
            code = data[offset + 1]
            reason = (
                UNREACH_REASONS.get(code, f"unreachable (code {code})")
                if kind == ICMP_UNREACH
                else "time exceeded"
            )
            self._error(data, inner_icmp, data[inner + 16 : inner + 20], reason)
        else:
            self.stats.foreign += 1  # only reachable without a kernel filter

    def _parse_v6(self, data: bytes, source: bytes, arrived: float = 0.0, now: float = 0.0) -> None:
        if len(data) < 8:
            self.stats.malformed += 1
            return
        kind = data[0]
        if kind == ICMP6_ECHO_REPLY:
            self._reply(data, 0, source, arrived, now)
        elif kind in (ICMP6_UNREACH, ICMP6_TIME_EXCEEDED):
            inner = 8
            if len(data) < inner + 48 or data[inner] >> 4 != 6 or data[inner + 40] != ICMP6_ECHO:
                self.stats.malformed += 1
                return
            code = data[1]
            reason = (
                UNREACH6_REASONS.get(code, f"unreachable (code {code})")
                if kind == ICMP6_UNREACH
                else "time exceeded"
            )
            self._error(data, inner + 40, data[inner + 24 : inner + 40], reason)
        else:
            self.stats.foreign += 1

    def _reply(
        self, data: bytes, offset: int, source: bytes, arrived: float = 0.0, now: float = 0.0
    ) -> None:
        """An echo reply; `arrived` is when the kernel got it and `now` when it was read
        (monotonic; 0: now), so a reply read late still has the RTT it had."""
        key = int.from_bytes(data[offset + 4 : offset + 8], "big")
        flight = self._flights.get(key)
        if (
            flight is None
            or flight[3] != data[offset + 8 : offset + 8 + AUTH_LEN]
            or flight[1] != source
        ):
            # Ours but expired (our tag), or another pinger's, or not from the target, or
            # without this probe's authenticator: never a reply to a probe in flight.
            tag = data[offset + 8 + AUTH_LEN : offset + PACKET_LEN]
            if flight is None and tag == self.tag:
                self.stats.late += 1
            else:
                self.stats.foreign += 1
            return
        del self._flights[key]
        self.stats.replies += 1
        now = now or time.monotonic()
        if not flight[2] <= arrived <= now:
            arrived = now
        self.on_result(flight[0], arrived - flight[2], None)

    def _error(self, data: bytes, icmp: int, quoted_target: bytes, reason: str) -> None:
        key = int.from_bytes(data[icmp + 4 : icmp + 8], "big")
        flight = self._flights.get(key)
        if flight is None or flight[1] != quoted_target:
            self.stats.foreign += 1
            return
        quoted_auth = data[icmp + 8 : icmp + 8 + AUTH_LEN]
        if len(quoted_auth) < AUTH_LEN:
            # Only the header is quoted: anyone who saw the probe could have written this.
            self.stats.hints += 1
            return
        if quoted_auth != flight[3]:
            self.stats.foreign += 1
            return
        del self._flights[key]
        self.stats.errors += 1
        self.on_result(flight[0], None, reason)

    # -- expiry ----------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(min(0.05, self.timeout / 4), self._sweep)

    def _sweep(self) -> None:
        try:
            if self._rest is None:  # else the expiry's next step is due already
                self._expire_step()
        except Exception as e:
            self._failed(e)
        finally:
            # Whatever happened, lost probes go on being reported.
            if self._sweeper is not None:  # None once closed
                self._schedule_sweep()

    def _expire_step(self) -> None:
        """One step of the event loop's expiry: the replies waiting are read first, then
        at most EXPIRE_SLICE probes are called lost; what is left due is the next step's
        (call_soon), so a sweep that finds thousands expired (a core failure at 20,000
        probes a second) never holds the loop for all of them at once."""
        now = time.monotonic()
        unread = False
        if self._expiry and self._expiry[0][0] <= now:
            # Replies waiting in a socket came in time: after the loop was held, the
            # sweep may run before the reader, and must not call them lost. When a
            # drain stops at its budget, more may wait: nothing is called lost in this
            # step, the next one reads on first; only once, as a raw socket also gets
            # every other pinger's replies, which must not put the expiry off for ever.
            for fam in list(self._families.values()):
                unread = self._drain(fam) or unread
        if unread and not self._read_on:
            self._read_on = more = True
        else:
            self._read_on = False
            more = self._expire(now, EXPIRE_SLICE)
        if more and self._rest is None and self._loop is not None and self._sweeper is not None:
            self._rest = self._loop.call_soon(self._expire_rest)

    def _expire_rest(self) -> None:
        """The expiry's next step, when the last one left probes due or replies unread."""
        self._rest = None
        if self._sweeper is None:
            return  # closed meanwhile
        try:
            self._expire_step()
        except Exception as e:
            self._failed(e)

    def _expire(self, now: float, limit: int = 0) -> bool:
        """Call the probes whose deadline is past lost, in the order they were sent, each
        once: at most `limit` of them (0: all). Returns whether some due are left."""
        expiry = self._expiry
        flights = self._flights
        stats, on_result = self.stats, self.on_result
        left = limit or -1
        while expiry and expiry[0][0] <= now:
            deadline, keys = expiry.popleft()
            if isinstance(keys, int):
                keys = [keys]
            for i, key in enumerate(keys):
                flight = flights.pop(key, None)
                if flight is None:
                    continue  # answered
                stats.lost += 1
                left -= 1
                try:
                    on_result(flight[0], None, "timeout")
                except BaseException:
                    if i + 1 < len(keys):  # the rest are still reported, later
                        expiry.appendleft((deadline, keys[i + 1 :]))
                    raise
                if not left:
                    if i + 1 < len(keys):
                        expiry.appendleft((deadline, keys[i + 1 :]))
                    return bool(expiry) and expiry[0][0] <= now
        return False

    # -- without asyncio -------------------------------------------------------------

    def run(self, targets: Sequence[str], rounds: int = 1, interval: float = 0.0) -> None:
        """Probe every target `rounds` times, `interval` s apart, and return when every
        probe is answered or expired: the probe command's loop, with no event loop (use
        either this or open(), not both). Batches are sent back to back while the replies
        wait in the socket, each stamped by the kernel on arrival (SO_TIMESTAMPNS), so
        reading them later costs no RTT's accuracy; they are read when a receive queue
        nears its limit, before any probe is called lost, and after the sending. (Read
        between batches, they held up the last send, and with it the end of a silent
        target's wait, by the time reading took.) Without stamps, a batch is sent, then
        what came back is read.

        (A sender thread beside the reader was measured too: on a busy two-core machine
        it was slower, 1.7-2.2 s against 1.3-1.6 s for 60,000 targets, the GIL's
        hand-offs costing more kernel time than the overlap saved.)
        """
        v6 = any(":" in t for t in targets)
        v4 = not v6 or not all(":" in t for t in targets)
        for family in (socket.AF_INET,) * v4 + (socket.AF_INET6,) * v6:
            fam = self._family(family)
            if self._batching is None:
                self._batching = _batch_available()
            if self._batching and fam.batch is None:
                # Set up now, not between a send and its reply.
                fam.batch = _Messages(family, PACKET_LEN)
                fam.stamped = fam.stamp()
                fam.inbox = _Messages(family, 2048, stamped=fam.stamped)
        self._stamp_offset = time.time() - time.monotonic()
        families = list(self._families.values())
        poller = select.poll()
        for fam in families:
            poller.register(fam.sock.fileno(), select.POLLIN)
        expiry = self._expiry
        start = time.monotonic()
        for r in range(rounds):
            if r:
                self._wait(poller, families, start + r * interval)
            for i in range(0, len(targets), BATCH):
                self.send_many(targets[i : i + BATCH])
                # Replies wait in the socket, timed by the kernel, while the sending goes
                # on: read when the queue nears its limit, or before anything is called lost.
                now = time.monotonic()
                due = bool(expiry) and expiry[0][0] <= now
                for fam in families:
                    if due or not fam.stamped or fam.crowded():
                        self._drain_all(fam)
                if due:
                    self._expire(now)  # what came by `now` has just been read
        self._wait(poller, families, None)

    def _wait(self, poller: select.poll, families: list[_Family], until: float | None) -> None:
        """Read replies and expire probes until `until`, or with None until no probe is
        left in flight."""
        while True:
            now = time.monotonic()
            for fam in families:
                self._drain_all(fam)
            self._expire(now)  # every reply that came by `now` has been read
            if not self._flights if until is None else now >= until:
                return
            deadline = self._expiry[0][0] if self._expiry else now + 1.0
            if until is not None:
                deadline = min(deadline, until)
            poller.poll(max(0.0, deadline - now) * 1000 + 1)

    def _drain_all(self, fam: _Family) -> None:
        """Read everything the socket holds (run(): no event loop to share)."""
        while self._drain(fam):
            pass

    def kernel_drops(self) -> int:
        """Packets the kernel dropped on our sockets because the buffer was full."""
        total = 0
        for fam in self._families.values():
            if fam.raw:
                total += _raw_drops(fam.inode(), "/proc/net/raw6" if fam.v6 else "/proc/net/raw")
        self.stats.kernel_drops = total
        return total


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
