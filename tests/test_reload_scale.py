"""A reload of a large city while the daemon probes it: no probe is called lost, no
incident opens (real daemon, real ICMP to its routers' 127.0.0.0/8 addresses)."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest

from outagemon.sim import citygen
from tests.conftest import free_port, short_tmp_dir
from tests.test_daemon import Proc, start

SUBSCRIBERS = 20_000  # every one with a probed router: ~20,600 targets every 10 s


def series(proc: Proc) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}


def wait(what: str, ok: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ok) and ok():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:g} s")


@pytest.fixture
def big_daemon() -> Iterator[Proc]:
    state = short_tmp_dir()
    citygen.sized(100, SUBSCRIBERS).write(state)
    proc = start(state, free_port(), state / "notify.sock")
    yield proc
    if proc.process.poll() is None:
        proc.process.kill()
        proc.process.wait()
    proc.notify.close()


def test_a_reload_of_a_large_city_during_probing_loses_no_probe(big_daemon: Proc) -> None:
    d = big_daemon
    d.wait_for_log("daemon.first_round_done", timeout=120)
    sent = 'outagemon_probe_packets_total{kind="sent"}'
    lost = 'outagemon_probe_packets_total{kind="lost"}'
    before = series(d)
    targets = before["outagemon_topology_nodes"]
    assert targets > SUBSCRIBERS
    # The same city with other accounts and phones (another seed): a full reload.
    citygen.sized(100, SUBSCRIBERS, seed=2).write(d.state)
    d.process.send_signal(signal.SIGHUP)
    d.wait_for_log("config.reloaded", timeout=120)
    # A whole round of probes after the reload, every target once more.
    wait("a round after the reload", lambda: series(d)[sent] >= before[sent] + targets)
    after = series(d)
    assert after[lost] == before[lost], (before[lost], after[lost])
    opened = {k: v for k, v in after.items()
              if k.startswith("outagemon_incident_events_total") and v}  # fmt: skip
    assert opened == {}, opened
    assert after['outagemon_config_reloads_total{outcome="applied"}'] == 1
