"""`outagemon probe`: ping targets with the daemon's own engine, printing like fping."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from outagemon import logs
from outagemon.probing.engine import Engine, PermissionProblem

CHUNK = 256  # probes sent before letting the reader drain replies


@dataclass
class Tally:
    target: str
    sent: int = 0
    rtts: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

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
            "reason": self.reasons[-1] if self.reasons and not self.rtts else None,
        }


def read_targets(args: list[str], file: str | None, stdin: TextIO) -> list[str]:
    names = list(args)
    if file is not None:
        text = stdin.read() if file == "-" else Path(file).read_text()
        lines = text.splitlines()
        names += [line.split("#", 1)[0].strip() for line in lines]
    return [n for n in names if n]


def resolve(name: str) -> str:
    """An address for a name or literal; OSError with the resolver's reason."""
    info = socket.getaddrinfo(name, None, type=socket.SOCK_RAW)
    return str(info[0][4][0])


async def ping(targets: list[str], count: int, interval: float, wait: float) -> list[Tally]:
    """Probe every target `count` times, `interval` s apart; each reply awaited `wait` s."""
    tallies = {t: Tally(t) for t in targets}
    outstanding = 0
    all_sent = False
    finished = asyncio.Event()

    def on_result(target: str, rtt: float | None, reason: str | None) -> None:
        nonlocal outstanding
        tally = tallies[target]
        if rtt is None:
            tally.reasons.append(reason or "timeout")
        else:
            tally.rtts.append(rtt)
        outstanding -= 1
        if outstanding == 0 and all_sent:
            finished.set()

    engine = Engine(on_result, timeout=wait)
    families = {socket.AF_INET6 if ":" in t else socket.AF_INET for t in targets}
    engine.open(tuple(sorted(families)))
    try:
        start = time.monotonic()
        for round_number in range(count):
            delay = start + round_number * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for i, target in enumerate(targets):
                outstanding += 1
                tallies[target].sent += 1
                engine.send(target)
                if i % CHUNK == CHUNK - 1:
                    await asyncio.sleep(0)
        all_sent = True
        if outstanding:
            await finished.wait()
    finally:
        engine.close()
    return [tallies[t] for t in targets]


def main(
    targets: list[str], file: str | None, count: int, interval_ms: float, timeout_ms: float,
    as_json: bool,
) -> int:  # fmt: skip
    # Logs to stderr, warnings only: stdout is the result, often read by another program.
    logs.setup(level="warning", stream=sys.stderr)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends us quietly, as it does fping
    if count < 1 or interval_ms < 0 or timeout_ms <= 0:
        print("outagemon probe: -c must be at least 1, -i at least 0 and -t above 0.",
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
    addresses: list[str] = []
    for name in names:
        try:
            addresses.append(resolve(name))
        except (OSError, UnicodeError) as e:
            print(f"outagemon probe: {name}: cannot be resolved ({e}).", file=sys.stderr)
            return 2
    unique = list(dict.fromkeys(addresses))
    try:
        tallies = asyncio.run(ping(unique, count, interval_ms / 1000, timeout_ms / 1000))
    except PermissionProblem as e:
        print(f"outagemon probe: {e}", file=sys.stderr)
        return 2
    if as_json:
        json.dump([t.as_json() for t in tallies], sys.stdout)
        print()
    else:
        for t in tallies:
            print(_line(t, count))
    return 0 if all(t.received for t in tallies) else 1


def _line(t: Tally, count: int) -> str:
    if count == 1:
        if t.rtts:
            return f"{t.target} is alive ({t.rtts[0] * 1000:.2f} ms)"
        return f"{t.target} is unreachable ({t.reasons[-1] if t.reasons else 'timeout'})"
    loss = round(100 * (1 - t.received / t.sent)) if t.sent else 100
    line = f"{t.target} : xmt/rcv/%loss = {t.sent}/{t.received}/{loss}%"
    if t.rtts:
        ms = [r * 1000 for r in t.rtts]
        line += f", min/avg/max = {min(ms):.2f}/{sum(ms) / len(ms):.2f}/{max(ms):.2f}"
    return line
