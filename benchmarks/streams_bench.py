"""The IVR's /check while live pages are open: the real daemon on a generated city, N
`/events` streams held open, then sequential /check requests timed; and the daemon's CPU.

    python -m benchmarks.streams_bench [--streams 100] [--other-tree DIR] [--rounds 2]

With --other-tree (another checkout, e.g. a `git worktree` of an older commit) the two
daemons are measured in alternating rounds and both are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp

from outagemon.sim import citygen

HERE = Path(__file__).resolve().parent.parent
CONFIG = """
[daemon]
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[probe]
interval = 10
[topology]
file = "topology.yaml"
subscribers = "subscribers.csv"
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(tree: Path, city: Path, state: Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    port = _free_port()
    for name in ("topology.yaml", "subscribers.csv"):
        (state / name).write_bytes((city / name).read_bytes())
    (state / "outagemon.toml").write_text(CONFIG.format(state=state, port=port))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(state / "notify.sock"))

    def drain() -> None:  # as systemd does: unread, a full queue blocks the daemon's send
        while notify.recv(4096):
            pass

    threading.Thread(target=drain, daemon=True).start()
    env = {**os.environ, "NOTIFY_SOCKET": str(state / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    with (state / "daemon.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "outagemon", "run", "-c",
                                 str(state / "outagemon.toml")], cwd=tree, env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the daemon in {tree} did not start: see {state / 'daemon.log'}")


async def _round(port: int, pid: int, streams: int, phone: str) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as pages,
        aiohttp.ClientSession() as ivr,
    ):
        opened = await asyncio.gather(*(pages.get(f"{base}/events") for _ in range(streams)))
        held = [r for r in opened if r.status == 200]
        readers = [asyncio.ensure_future(r.content.read()) for r in held]  # keep reading
        await asyncio.sleep(3)
        cpu0, t0 = _cpu(pid), time.monotonic()
        times: list[float] = []
        while len(times) < 1000 and time.monotonic() - t0 < 30:  # a saturated loop: 30 s
            started = time.perf_counter()
            async with ivr.get(f"{base}/api/v1/check", params={"phone": phone}) as r:
                await r.read()
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
        cpu = (_cpu(pid) - cpu0) / (time.monotonic() - t0)
        for task in readers:
            task.cancel()
        for r in opened:
            r.close()
    times.sort()
    return {"held": len(held), "checks": len(times), "p50": statistics.median(times) * 1000,
            "p99": times[int(len(times) * 0.99)] * 1000, "cpu": cpu * 100}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--other-tree", type=Path)
    parser.add_argument("--aggregations", type=int, default=10)
    parser.add_argument("--access", type=int, default=400)
    args = parser.parse_args()
    import tempfile

    city = Path(tempfile.mkdtemp(prefix="om-city-"))
    generated = citygen.generate(aggregations=args.aggregations,
                                 access_per_aggregation=args.access)  # fmt: skip
    generated.write(city)
    phone = (city / "subscribers.csv").read_text().splitlines()[1].split(",")[1]
    trees = {"this tree": HERE}
    if args.other_tree:
        trees["other tree"] = args.other_tree.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            state = Path(tempfile.mkdtemp(prefix="om-")).resolve()
            state.chmod(0o755)
            proc, port = _start(tree, city, state)
            try:
                results[name].append(asyncio.run(_round(port, proc.pid, args.streams, phone)))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(name, results[name][-1], flush=True)
    print(f"{args.streams} streams asked, city of {len(generated.nodes)} nodes:")
    for name, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"  {name}: streams held {med['held']:.0f}, {med['checks']:.0f} checks, "
              f"/check p50 {med['p50']:.2f} ms, "
              f"p99 {med['p99']:.2f} ms, daemon CPU {med['cpu']:.0f} % of a core "
              f"(medians of {len(rounds)} rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
