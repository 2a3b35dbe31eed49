"""A network to monitor on one Linux host: a namespace where every 127.0.0.0/8 address
answers, and nftables in it to make chosen addresses silent (a dead switch) or lossy.

Only loopback addresses are ever used. Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN),
`ip` (iproute2) and `nft` (nftables). The namespace is removed on close, and with it
every rule, so a failed test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence

CLONE_NEWNET = 0x40000000
TABLE = "outagemon_lab"


class LabUnavailable(Exception):
    """This host cannot build the lab; str() says why (a test skips with it)."""


def _run(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise LabUnavailable(f"{' '.join(args[:4])}: {result.stderr.strip() or result.returncode}")


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def check_loopback(addresses: Sequence[str]) -> None:
    """Refuse anything outside 127.0.0.0/8 and ::1: the lab never addresses a real network.
    Addresses and prefixes ("127.0.0.0/8") are both accepted."""
    for a in addresses:
        try:
            net = ipaddress.ip_network(a, strict=False)
        except ValueError:
            raise ValueError(f"{a!r} is not an address or prefix") from None
        if not any(net.version == lo.version and net.subnet_of(lo) for lo in LOOPBACK):  # type: ignore[arg-type]
            raise ValueError(f"the lab only uses 127.0.0.0/8 and ::1, not {a}")


class Lab:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"om-lab-{uuid.uuid4().hex[:8]}"
        self._losses: dict[int, set[str]] = {}
        self._limits: dict[str, int] = {}  # address -> echo requests answered a minute
        self._down: set[str] = set()
        self._open = False

    # -- life ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise LabUnavailable(f"'{tool}' is not installed (Debian: iproute2, nftables)")
        if os.geteuid() != 0:
            raise LabUnavailable("network namespaces need root")
        _run("ip", "netns", "add", self.name)
        self._open = True
        try:
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
            self._apply()
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._open:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            self._open = False

    # -- faults ----------------------------------------------------------------------

    def down(self, *addresses: str) -> None:
        """Make addresses silent: echo requests to them are dropped, like a dead switch."""
        check_loopback(addresses)
        self._down.update(addresses)
        self._apply()

    def up(self, *addresses: str) -> None:
        """Lift `down` and any loss from these addresses."""
        self._down.difference_update(addresses)
        for members in self._losses.values():
            members.difference_update(addresses)
        for address in addresses:
            self._limits.pop(address, None)
        self._apply()

    def loss(self, percent: int, *addresses: str) -> None:
        """Drop `percent` % of echo requests to these addresses, at random."""
        check_loopback(addresses)
        if not 0 < percent < 100:
            raise ValueError("loss is a percentage from 1 to 99")
        for members in self._losses.values():
            members.difference_update(addresses)
        self._losses.setdefault(percent, set()).update(addresses)
        self._apply()

    def limit(self, per_minute: int, *addresses: str) -> None:
        """Answer only `per_minute` echo requests a minute to each of these addresses (one
        at a time, no burst) and drop the rest: a router's ICMP rate limit."""
        check_loopback(addresses)
        if per_minute < 1:
            raise ValueError("a rate limit answers at least one request a minute")
        if any(":" in a for a in addresses):
            raise ValueError("a rate limit is for IPv4 addresses")
        self._limits.update(dict.fromkeys(addresses, per_minute))
        self._apply()

    def clear(self) -> None:
        self._down.clear()
        self._losses.clear()
        self._limits.clear()
        self._apply()

    def _apply(self) -> None:
        """Replace the whole rule set atomically (one nft transaction)."""
        v4_down = sorted(a for a in self._down if "." in a)
        lines = [
            f"table inet {TABLE} {{}}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "  chain input {",
            "    type filter hook input priority 0; policy accept;",
        ]
        if v4_down:
            lines.append(f"    ip daddr {{ {', '.join(v4_down)} }} icmp type echo-request drop")
        if "::1" in self._down:
            lines.append("    ip6 daddr ::1 icmpv6 type echo-request drop")
        for percent, members in sorted(self._losses.items()):
            v4 = sorted(a for a in members if "." in a)
            if v4:
                lines.append(
                    f"    ip daddr {{ {', '.join(v4)} }} icmp type echo-request "
                    f"numgen random mod 100 < {percent} drop"
                )
        for address, per_minute in sorted(self._limits.items()):
            lines.append(
                f"    ip daddr {address} icmp type echo-request "
                f"limit rate over {per_minute}/minute burst 1 packets drop"
            )
        lines += ["  }", "}"]
        _run("ip", "netns", "exec", self.name, "nft", "-f", "-", stdin="\n".join(lines) + "\n")

    # -- running things inside -------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        """argv that runs a command inside the lab's namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch this thread into the namespace; sockets opened inside stay in it."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.name}") as lab:
            if libc.setns(lab.fileno(), CLONE_NEWNET) != 0:
                raise LabUnavailable(f"setns failed: {os.strerror(ctypes.get_errno())}")
            try:
                yield
            finally:
                libc.setns(home.fileno(), CLONE_NEWNET)
