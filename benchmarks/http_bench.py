"""The phone menu's question under a call surge: wrk against /check, beside a bare handler.

    .venv/bin/python -m benchmarks.http_bench [--subscribers 1000000] [--rounds 5]
                                              [--seconds 8] [--city DIR]

A generated city (synthetic: outagemon/citygen.py) of 5,000 access switches and
1,000,000 subscribers is loaded into a real outagemon HTTP app, with a mass outage open
(an aggregation switch and the 100 buildings behind it). wrk (Debian package) asks
`/check?phone=...` with a different subscriber's phone on every request, at 256
connections, with the token a phone menu sends. Beside it, the same wrk asks a bare
aiohttp handler that returns a constant (same Python, same event loop, one process each).
Both servers run for the whole benchmark and the runs alternate between them, round after
round. Two loads: wrk's usual saturation (as fast as it goes: throughput), and a steady
surge of 2,000 calls a second (each connection paced by wrk's delay(): latency when the
server is not saturated; a city's worst call surge is tens of calls a second).
`--city DIR` keeps the generated files in DIR and reuses them next time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from outagemon.sim import citygen

TOKEN = "bench-read-token-0123456789"
PACED_RATE = 2000  # requests a second in the paced run
CONNECTIONS = 256

LUA = """
local phones = {}
for line in io.lines("%(phones)s") do phones[#phones + 1] = line end
local counter = 0
request = function()
  counter = counter + 1
  local p = phones[(counter * 7919) %% #phones + 1]
  return wrk.format("GET", "%(path)s" .. p, {["Authorization"] = "Bearer %(token)s"})
end
%(delay)s
"""


def serve_main(directory_path: str, port: int, kind: str) -> None:
    """Child process: the outagemon app (or a bare handler) on `port`, until killed."""
    from aiohttp import web

    if kind == "bare":

        async def constant(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_get("/api/v1/check", constant)
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return

    from outagemon import config, logs
    from outagemon.core import directory, messages
    from outagemon.core.health import NodeState, State
    from outagemon.core.incidents import Incident, Kind
    from outagemon.http.app import make_app
    from outagemon.http.runtime import Runtime
    from outagemon.metrics import Registry
    from outagemon.monitor import Monitor

    logs.setup(level="warning", stream=sys.stderr)
    root = Path(directory_path)
    cfg = config.parse(
        f'[[auth.tokens]]\nname = "bench"\ntoken = "{TOKEN}"\nrole = "read"\n',
        root / "outagemon.toml",
    )
    d = directory.load(root / "topology.yaml", root / "subscribers.csv").directory
    rt = Runtime(config=cfg, directory=d, texts=messages.load("ru"))
    monitor = Monitor(cfg, d, Registry())
    now = time.time()
    for node in d.topology.nodes.values():  # the network has been watched for a while
        if node.probed:
            monitor.correlator.states[node.id] = NodeState(state=State.UP, changed_at=now)
    cut = ["agg-1", *d.topology.descendants("agg-1")]
    monitor.correlator.restore([Incident(1, "agg-1", Kind.OUTAGE, False, now - 600, cut)], 2)
    monitor.correlator.tick(now)
    monitor.first_round_done = True
    rt.monitor = monitor
    rt.not_ready = None
    import gc

    gc.collect()
    gc.freeze()  # as the daemon does after loading
    print(f"ready {len(cut)} nodes cut off", file=sys.stderr, flush=True)
    web.run_app(make_app(rt), host="127.0.0.1", port=port, print=None, access_log=None)


def wait_ready(port: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/check?account=0",
                                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            urllib.request.urlopen(req, timeout=1).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def wrk(port: int, phones: Path, path: str, seconds: int, paced: bool,
        until: Callable[[], bool] | None = None) -> dict[str, float]:  # fmt: skip
    """wrk's figures for a run of `seconds`; with `until`, a run that ends (SIGINT: wrk
    prints what it measured so far) once `until()` is true, `seconds` at most."""
    delay = ""
    if paced:
        # Random gaps (mean CONNECTIONS / PACED_RATE): callers do not arrive in lockstep.
        mean_ms = CONNECTIONS / PACED_RATE * 1000
        delay = f"delay = function() return math.random(0, {2 * mean_ms:.0f}) end"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"phones": phones, "path": path, "token": TOKEN, "delay": delay})
        script = f.name
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", script,
               f"http://127.0.0.1:{port}"]  # fmt: skip
    if until is None:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    else:
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as running:
            while running.poll() is None and not until():
                time.sleep(0.5)
            running.send_signal(signal.SIGINT)
            out = running.communicate()[0]
    os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"\s+(50|75|90|99)%\s+(\S+)", out)}
    errors = 0
    for m in re.finditer(r"(Non-2xx or 3xx responses|Socket errors):?\s*(.*)", out):
        errors += sum(int(x) for x in re.findall(r"\d+", m.group(2)))
    kinds = {k: float(n) for k, n in re.findall(r"(connect|read|write|timeout) (\d+)", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    kinds["non2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's own CPU: is it the limit?
    wrk_cpu = after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime
    return {"rps": rps, "p50": lat.get("50", 0.0), "p99": lat.get("99", 0.0),
            "errors": errors, "wrk_cpu": wrk_cpu, **kinds}  # fmt: skip


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    return value * 1000  # seconds


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--access", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=8, help="length of one wrk run")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of each load")
    ap.add_argument("--city", help="a directory with a city written by an earlier run")
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_main(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    work = Path(args.city or tempfile.mkdtemp(prefix="om-http-bench-"))
    phone_file = work / "phones.txt"
    if not phone_file.exists():
        city = citygen.sized(args.access, args.subscribers)
        city.write(work)
        (work / "outagemon.toml").write_text("")
        phones = [row[1].split(";")[0] for row in city.rows]
        random.Random(1).shuffle(phones)
        phone_file.write_text("\n".join(urllib.parse.quote(p) for p in phones) + "\n")
    subscribers = sum(1 for _ in phone_file.open())
    # Both servers run side by side for the whole benchmark and the loads alternate
    # between them, round after round: this VM's speed drifts by a third over minutes,
    # and alternating puts each drift on both sides of the comparison.
    ports = {"outagemon": 18081, "bare": 18082}
    me = [sys.executable, "-m", "benchmarks.http_bench", "--serve", str(work)]
    servers = {kind: subprocess.Popen([*me, str(port), kind]) for kind, port in ports.items()}
    runs: dict[str, list[dict[str, float]]] = {}
    path = "/api/v1/check?phone="
    try:
        for kind in servers:
            wait_ready(ports[kind], 180)
            # Warm up as long as a run: the first caller of each serving node (20,000 in
            # the default city) pays for working its answer out (about twice a remembered
            # one); a surge is minutes long, and what is measured here is its steady state.
            wrk(ports[kind], phone_file, path, args.seconds, paced=False)
        for _ in range(args.rounds):
            for paced in (False, True):
                for kind, server in servers.items():
                    before = cpu_seconds(server.pid)
                    r = wrk(ports[kind], phone_file, path, args.seconds, paced=paced)
                    used = cpu_seconds(server.pid) - before
                    r["cpu_us"] = used / (r["rps"] * args.seconds) * 1e6
                    runs.setdefault(kind + (" paced" if paced else ""), []).append(r)
    finally:
        for server in servers.values():
            server.terminate()
            server.wait()
    if not args.city:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"city (synthetic): {args.access:,} access switches, {subscribers:,} subscribers; "
        f"one aggregation switch down; wrk -t1 -c{CONNECTIONS}, {args.rounds} alternating "
        f"rounds of {args.seconds} s; {os.cpu_count()} cores shared by wrk and the servers"
    )
    print("  (medians over the rounds; CPU is the server's own, per request)")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us")}
        print(f"  {name:17} {med['rps']:>9,.0f} req/s  p50 {med['p50']:7.2f} ms  "
              f"p99 {med['p99']:7.2f} ms  CPU {med['cpu_us']:6.1f} µs/req  "
              f"errors {sum(r['errors'] for r in rs):.0f}")  # fmt: skip
    shares = [o["rps"] / b["rps"] for o, b in zip(runs["outagemon"], runs["bare"], strict=True)]
    paced_p99 = [r["p99"] for r in runs["outagemon paced"]]
    print(
        f"  /check throughput is {statistics.median(shares):.0%} of the bare handler's "
        f"(each round: {', '.join(f'{x:.0%}' for x in shares)}; target >= 60 %)"
    )
    print(
        f"  p99 at {PACED_RATE:,} calls/s: median {statistics.median(paced_p99):.2f} ms, "
        f"worst {max(paced_p99):.2f} ms (target < 5 ms)"
    )
    print(json.dumps(runs), file=sys.stderr)
    print(
        "reproduce: .venv/bin/python -m benchmarks.http_bench "
        f"--subscribers {args.subscribers} --seconds {args.seconds} --rounds {args.rounds}"
    )


if __name__ == "__main__":
    main()
