"""The calls' detector's intake in a surge: CPU for 100,000 calls, a tick a second's
worth (1,000 calls), of 800 buildings' subscribers, a fifth naming no flat (what
`CallWatch._household` looks at), one call every 30 ms.

    PYTHONPATH=/work/main .venv/bin/python benchmarks/calls_intake_bench.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/calls_intake_bench.py

Run the two interleaved: PYTHONPATH picks the tree (run as a file, not with -m, which
would put the working directory's tree first); the tree measured is printed. The calls
are keyed by `caller_key` of the tree run, as the monitor keys them; the detector is the
real one with its default settings (`keep` raised to hold them all), explaining nothing.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import outagemon
from outagemon.core import directory as directory_mod
from outagemon.core import topology
from outagemon.core.calls import Call, CallWatch, Settings, caller_key
from outagemon.sim import citygen

CALLS = 100_000
TICK = 1_000


def main() -> None:
    city = citygen.generate(aggregations=4, access_per_aggregation=10,
                            subscribers_per_access=40, entrances=2)  # fmt: skip
    topo = topology.parse_text(city.topology_yaml(), Path("topology.yaml"))
    subs, _ = directory_mod.parse_csv(city.subscribers_csv(), Path("subscribers.csv"), topo)
    d = directory_mod.Directory(directory_mod.with_cpes(topo, subs), subs)
    rng = random.Random(1)
    people = [(s.serving, s.address.text(with_flat=False), s.flat) for s in d.subscribers]
    made = []
    for i in range(CALLS):
        node, building, flat = rng.choice(people)
        named = rng.random() >= 0.2
        key = caller_key(b"salt", *(("home", f"{building}\x00{flat}") if named
                                    else ("building", building)))  # fmt: skip
        made.append((i * 0.03, node, building, key))
    best = []
    for _ in range(3):
        w = CallWatch(d.topology, d.counts, Settings(keep=2 * CALLS), started=0.0)
        calls = [Call(at, node, building, key, "ivr", "ok") for at, node, building, key in made]
        ids = iter(range(1, 10**9))
        started = time.process_time()
        for k in range(0, CALLS, TICK):
            w.tick(calls[k + TICK - 1].at, calls[k : k + TICK], lambda n: False,
                   ids.__next__)  # fmt: skip
        best.append(time.process_time() - started)
    tree = Path(outagemon.__file__).parent.parent
    print(f"{tree}: {min(best):.2f} s CPU for {CALLS:,} calls (best of 3), "
          f"{len(w.open)} suspicion(s) open")  # fmt: skip


if __name__ == "__main__":
    main()
