"""`outagemon probe`: ping targets with the daemon's own engine, printing like fping.

A whole process that a NOC engineer times against fping: no asyncio and no logging
set-up (their imports alone cost a third of fping's time for 10,000 targets), literal
addresses parsed without the resolver, names resolved concurrently, probes sent in
batches by the engine's own loop, the output written in large blocks.
"""

from __future__ import annotations

import gc
import math
import signal
import socket
import sys
from itertools import islice

from outagemon.probing.engine import Engine, PermissionProblem, ResultCallback

TYPE_CHECKING = False  # typing is not imported at run time: start-up counts here
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import TextIO

OUTPUT_BLOCK = 4096  # lines per write
# The shortest -t the engine can keep to: shorter, a loopback reply (in the socket before
# the first look) was reported alive, with an RTT longer than the timeout.
MIN_TIMEOUT_MS = 1.0
RESOLVERS = 32  # names resolved at once


class Tally:
    """One target's probes, for --json."""

    __slots__ = ("reason", "rtts", "sent", "target")

    def __init__(self, target: str, sent: int, rtts: list[float], reason: str | None) -> None:
        self.target = target
        self.sent = sent
        self.rtts = rtts
        self.reason = reason

    @property
    def received(self) -> int:
        return len(self.rtts)

    def as_json(self) -> dict[str, object]:
        ms = [r * 1000 for r in self.rtts]
        return {
            "target": self.target,
            "alive": bool(self.rtts),
            "sent": self.sent,
            "received": self.received,
            "loss": round(1 - self.received / self.sent, 4) if self.sent else 1.0,
            "rtt_min_ms": round(min(ms), 3) if ms else None,
            "rtt_avg_ms": round(sum(ms) / len(ms), 3) if ms else None,
            "rtt_max_ms": round(max(ms), 3) if ms else None,
            "reason": self.reason if not self.rtts else None,
        }


def read_targets(args: list[str], file: str | None, stdin: TextIO) -> list[str]:
    names = list(args)
    if file is not None:
        if file == "-":
            text = stdin.read()
        else:
            with open(file) as f:
                text = f.read()
        lines = text.splitlines()
        if "#" in text:
            lines = [line.split("#", 1)[0] for line in lines]
        names += [line.strip() for line in lines]
    return [n for n in names if n]


def resolve(name: str) -> str:
    """An address for a name or literal; OSError with the resolver's reason."""
    info = socket.getaddrinfo(name, None, type=socket.SOCK_RAW)
    return str(info[0][4][0])


def literal(name: str) -> str | None:
    """The address as getaddrinfo would print it, when `name` is a literal address."""
    try:
        socket.inet_pton(socket.AF_INET, name)
        return name  # inet_pton takes only the canonical dotted quad
    except OSError:
        pass
    if ":" in name:
        try:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, name))
        except OSError:
            pass
    return None


def addresses_of(names: list[str]) -> tuple[list[str], tuple[str, BaseException] | None]:
    """Each name's address (literals parsed here, names resolved concurrently), and the
    first name in order the resolver failed on, with its error (then the list is not to
    be used)."""
    out: list[str] = []
    unresolved: list[int] = []
    inet_pton, v4 = socket.inet_pton, socket.AF_INET
    for name in names:
        try:
            inet_pton(v4, name)  # the common case, checked inline: most lists are IPv4
            out.append(name)
            continue
        except OSError:
            pass
        address = literal(name)
        if address is None:
            unresolved.append(len(out))
            out.append(name)
        else:
            out.append(address)
    if unresolved:
        from concurrent.futures import ThreadPoolExecutor

        def attempt(name: str) -> str | BaseException:
            try:
                return resolve(name)
            except (OSError, UnicodeError) as e:
                return e

        with ThreadPoolExecutor(min(RESOLVERS, len(unresolved))) as pool:
            found = pool.map(attempt, [names[i] for i in unresolved])
            for i, result in zip(unresolved, found, strict=True):
                if not isinstance(result, str):
                    return out, (names[i], result)
                out[i] = result
    return out, None


def ping(
    targets: list[str], count: int, interval: float, wait: float
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Probe every target `count` times, `interval` s apart; each reply awaited `wait` s.
    Returns the RTTs of each target and the last reason a probe of it was lost."""
    rtts: dict[str, list[float]] = {t: [] for t in targets}
    reasons: dict[str, str] = {}

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        if rtt is None:
            reasons[target] = reason or "timeout"
        else:
            rtts[target].append(rtt)

    _run(targets, count, interval, wait, on_result)
    return rtts, reasons


def ping_once(targets: list[str], wait: float) -> tuple[list[str], int]:
    """Probe every target once (-c 1); each reply awaited `wait` s. Returns each target's
    output line, in the order of `targets`, and how many did not answer. An answered
    target's line is made as its reply is read: with silent targets, while their
    timeouts are still awaited."""
    lines: dict[str, str | None] = dict.fromkeys(targets)
    reasons: dict[str, str] = {}

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        if rtt is None:
            reasons[target] = reason or "timeout"
        else:
            lines[target] = f"{target} is alive ({rtt * 1000:.2f} ms)\n"

    _run(targets, 1, 0.0, wait, on_result)
    lost = [t for t, line in lines.items() if line is None]
    for target in lost:
        lines[target] = f"{target} is unreachable ({reasons.get(target, 'timeout')})\n"
    return [line or "" for line in lines.values()], len(lost)


def _run(
    targets: list[str], count: int, interval: float, wait: float, on_result: ResultCallback
) -> None:
    engine = Engine(on_result, timeout=wait)
    try:
        engine.run(targets, count, interval)
    finally:
        engine.close()


def main(
    targets: list[str], file: str | None, count: int, interval_ms: float, timeout_ms: float,
    as_json: bool,
) -> int:  # fmt: skip
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends us quietly, as it does fping
    gc.disable()  # a short run that makes no cycles: collections would only cost time
    # (not x >= y: NaN is refused too)
    if count < 1 or not interval_ms >= 0 or not timeout_ms > 0 or math.isinf(timeout_ms):
        print("outagemon probe: -c must be at least 1, -i at least 0 and -t above 0.",
              file=sys.stderr)  # fmt: skip
        return 2
    if timeout_ms < MIN_TIMEOUT_MS:
        print(f"outagemon probe: -t {timeout_ms:g} is shorter than the engine can enforce: "
              f"give at least {MIN_TIMEOUT_MS:g} (ms). It waits in poll(), which counts "
              "whole milliseconds, and a reply already received is never called lost.",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        names = read_targets(targets, file, sys.stdin)
    except OSError as e:
        print(f"outagemon probe: cannot read {file}: {e.strerror}.", file=sys.stderr)
        return 2
    if not names:
        print("outagemon probe: no targets; name them or give -f FILE.", file=sys.stderr)
        return 2
    addresses, failed = addresses_of(names)
    if failed is not None:
        name, error = failed
        print(f"outagemon probe: {name}: cannot be resolved ({error}).", file=sys.stderr)
        return 2
    unique = list(dict.fromkeys(addresses))
    out = sys.stdout
    try:
        if count == 1 and not as_json:
            lines, lost = ping_once(unique, timeout_ms / 1000)
            _write(out, iter(lines))
            out.flush()
            return 0 if not lost else 1
        rtts, reasons = ping(unique, count, interval_ms / 1000, timeout_ms / 1000)
    except PermissionProblem as e:
        print(f"outagemon probe: {e}", file=sys.stderr)
        return 2
    if as_json:
        import json

        json.dump([Tally(t, count, rtts[t], reasons.get(t)).as_json() for t in unique], out)
        out.write("\n")
    else:
        _write(out, (_summary(t, count, r) for t, r in rtts.items()))  # in `unique`'s order
    out.flush()
    return 0 if all(rtts.values()) else 1


def _write(out: TextIO, lines: Iterator[str]) -> None:
    """The lines in blocks of OUTPUT_BLOCK, one write each."""
    while block := list(islice(lines, OUTPUT_BLOCK)):
        out.write("".join(block))


def _summary(target: str, count: int, rtts: list[float]) -> str:
    received = len(rtts)
    loss = round(100 * (1 - received / count))
    line = f"{target} : xmt/rcv/%loss = {count}/{received}/{loss}%"
    if rtts:
        ms = [r * 1000 for r in rtts]
        line += f", min/avg/max = {min(ms):.2f}/{sum(ms) / len(ms):.2f}/{max(ms):.2f}"
    return line + "\n"
