"""`calls_misses --price`: a missed fault's best value under each test, and how many
clusters of the usual calls (looked at, not raised) weigh as much."""

from __future__ import annotations

import math

from benchmarks.calls_bench import Fault
from benchmarks.calls_misses import price, usual_clusters

INF = math.inf


def test_a_missed_fault_is_priced_by_the_usual_clusters_that_weigh_as_much() -> None:
    fault = Fault("seg-a", 0.0, 3600.0, False)
    quiet = Fault("seg-q", 0.0, 3600.0, False)
    invisible, place = [fault, quiet], [{"seg-a"}, {"seg-q"}]
    looks = [
        ("seg-a", 100.0, 50.0, 14.0, -INF, 3e-7),  # the fault's place while it lasts
        ("seg-a", 130.0, 50.0, 13.0, 10.2, 1.0),
        ("seg-b", 200.0, 150.0, 13.0, -INF, 1.0),  # one usual cluster, looked at twice
        ("seg-b", 260.0, 150.0, 15.0, -INF, 1.0),
        ("seg-c", 9000.0, 8000.0, 12.0, 11.0, 2e-7),
        ("seg-a", 9000.0, 8500.0, 14.5, -INF, 1.0),  # the fault's place, long after it
    ]
    usual = usual_clusters(looks, invisible, place, 3600.0)
    assert sorted(usual) == [[12.0, 11.0, -2e-7], [14.5, -INF, -1.0], [15.0, -INF, -1.0]]
    assert price(looks, usual, invisible, place, 0, 3600.0) == (
        "price: burst 14.0 (2 usual), wake 10.2 (1 usual), scan 3e-07 (1 usual)"
    )
    assert price(looks, usual, invisible, place, 1, 3600.0) == "never looked at"
    only_pairs = [(n, at, o, b, -INF, 1.0) for n, at, o, b, _w, _s in looks]
    assert price(only_pairs, usual, invisible, place, 0, 3600.0) == (
        "price: burst 14.0 (2 usual), wake -, scan -"
    )
