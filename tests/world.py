"""A small world for HTTP tests: topology, subscribers, a monitor writing to a real
PostgreSQL, the aiohttp app served on a real port, and a simulated network to fail."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from outagemon import config
from outagemon.cluster.replica import Replica
from outagemon.core import directory, messages, topology
from outagemon.core.directory import Directory
from outagemon.core.incidents import Incident
from outagemon.db import migrate, store
from outagemon.db.writer import Writer
from outagemon.http.app import make_app
from outagemon.http.runtime import Runtime
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from outagemon.sim.simnet import SimNet

TOPOLOGY = """
nodes:
  - {id: core, kind: core, ip: 127.0.0.2}
  - {id: agg-n, kind: aggregation, ip: 127.0.0.3, parents: [core]}
  - {id: agg-s, kind: aggregation, ip: 127.0.0.4, parents: [core]}
  - {id: sw-lenina-5, kind: access, ip: 127.0.0.5, parents: [agg-n],
     name: "Access switch, Lenina 5", serves: ["ул. Ленина, д. 5"]}
  - {id: sw-mira-10, kind: access, ip: 127.0.0.6, parents: [agg-n]}
  - {id: seg-mira-1, kind: segment, parents: [sw-mira-10],
     serves: [{address: "пр-т Мира, д. 10", flats: "1-40"}]}
  - {id: seg-mira-2, kind: segment, parents: [sw-mira-10],
     serves: [{address: "пр-т Мира, д. 10", flats: "41-80"}]}
  - {id: sw-sad-1, kind: access, ip: 127.0.0.7, parents: [agg-s],
     serves: ["ул. Садовая, д. 3 корп. 1", "ул. Садовая, д. 3 корп. 2"]}
  - {id: sw-sad-5, kind: access, ip: 127.0.0.8, parents: [agg-s], serves: ["ул. Садовая, д. 5"]}
"""
SUBSCRIBERS = """account,phones,address,flat,ip
1001,8 (921) 000-00-01,"ул. Ленина, д. 5",12,
1002,+79210000002,"пр-т Мира, д. 10",15,127.0.1.2
1003,+79210000003,"пр-т Мира, д. 10",16,127.0.1.3
1004,+79210000004,"пр-т Мира, д. 10",17,127.0.1.4
1005,+79210000005,"пр-т Мира, д. 10",50,127.0.1.5
1006,+79210000006,"ул. Садовая, д. 3 корп. 2",8,
1007,+79210000007,"ул. Садовая, д. 5",9,
1008,+79210000008;+79210000002,"ул. Садовая, д. 5",10,
"""
READ, WRITE = "read-token-0123456789", "write-token-0123456789"
CONFIG = f"""
[correlation]
resolve_hold = 60
[messages]
language = "{{language}}"
restored_for = 3600
[[auth.tokens]]
name = "ivr"
token = "{READ}"
role = "read"
[[auth.tokens]]
name = "noc"
token = "{WRITE}"
role = "write"
"""


def build_directory(subscribers: str = SUBSCRIBERS) -> Directory:
    topo = topology.parse_text(textwrap.dedent(TOPOLOGY), Path("topology.yaml"))
    subs, problems = directory.parse_csv(subscribers, Path("subscribers.csv"), topo)
    assert problems == []
    return Directory(directory.with_cpes(topo, subs), subs)


@dataclass
class World:
    runtime: Runtime
    monitor: Monitor
    net: SimNet
    session: aiohttp.ClientSession
    server: TestServer
    pool: Any
    now: float

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def auth(self, token: str = READ) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def check(self, **params: str) -> dict[str, str]:
        async with self.session.get(self.url("/api/v1/check"), params=params,
                                    headers=self.auth()) as r:  # fmt: skip
            assert r.status == 200, await r.text()
            body: dict[str, str] = await r.json()
            return body

    def run(self, seconds: float) -> None:
        """Advance the simulated network to `seconds` after the world's start."""
        self.net.run_for(seconds)
        self.monitor.tick()

    async def flushed(self) -> None:
        assert self.monitor.writer is not None
        assert await self.monitor.writer.drain(10)


def driven(monitor: Monitor, start: float,
           clock: dict[str, float]) -> tuple[SimNet, Callable[[float], None]]:  # fmt: skip
    """The monitor's simulated network from `start` (its events to the monitor), and how
    to advance it some seconds: the network, the monitor's `clock`, then a tick."""
    net = SimNet(monitor.directory.topology, monitor.correlator, interval=5.0, timeout=1.0,
                 start=start)  # fmt: skip
    net.on_event = monitor.handle

    def advance(seconds: float) -> None:
        net.run_for(seconds)
        clock["now"] = net.now
        monitor.tick()

    return net, advance


def failed_then_repaired(net: SimNet, run: Callable[[float], None], monitor: Monitor,
                         node: str, down: float, after: float) -> Incident:  # fmt: skip
    """`node` fails for `down` seconds, then is repaired and `after` seconds run: the
    incident its failure opened (the only one open)."""
    net.fail(node)
    run(down)
    (inc,) = monitor.correlator.incidents.values()
    net.repair(node)
    run(after)
    return inc


@asynccontextmanager
async def world(
    dsn: str,
    language: str = "ru",
    tokens: bool = True,
    extra: str = "",
    subscribers: str = SUBSCRIBERS,
) -> AsyncIterator[World]:
    """`extra`: more configuration, such as an [http] section; `subscribers`: the CSV."""
    await migrate.migrate(dsn)
    pool = await store.connect(dsn)
    text = CONFIG.format(language=language)
    if not tokens:
        text = text.split("[[auth.tokens]]")[0]
    text = extra + text  # before the [[auth.tokens]] array, where a table may still go
    cfg = config.parse(text, Path("/etc/outagemon/outagemon.toml"))
    # The simulated network runs an hour in the past up to now, so times read naturally.
    start = time.time() - 3600
    if "wake_" not in extra:
        # What the callers' detector says of two or three calls must not hang on the hour
        # the tests run at (the waking hour from 07:00 UTC raises on two callers; before
        # it the night's are not scanned): the worlds' day starts at midnight, no waking
        # hour. tests/test_calls.py tries the waking hour itself.
        cfg = replace(cfg, callers=replace(cfg.callers, wake_at=0.0, wake_evidence=0.0))
    d = build_directory(subscribers)
    rt = Runtime(config=cfg, directory=d, texts=messages.load(language))
    writer = Writer(pool, 10_000, rt.metrics)
    clock = {"now": start}
    monitor = Monitor(cfg, d, rt.metrics, writer, clock=lambda: clock["now"])
    rt.monitor = monitor
    rt.pool = pool
    rt.not_ready = None
    import asyncio

    writer_task = asyncio.create_task(writer.run())
    nodes = [(n.id, n.kind, n.ip, n.name, list(n.parents)) for n in d.topology.nodes.values()]
    subs = [(s.account, list(s.phones), s.address.text(), s.flat, s.ip, s.node)
            for s in d.subscribers]  # fmt: skip

    async def inventory(conn: Any) -> None:
        await store.save_inventory(conn, nodes, subs)

    writer.submit("inventory", inventory)
    net, advance = driven(monitor, start, clock)
    app: web.Application = make_app(rt)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    w = World(rt, monitor, net, session, server, pool, start)
    w.run = advance  # type: ignore[method-assign,assignment]
    try:
        w.run(3000)  # warm: every target has a history of answers
        monitor.first_round_done = True
        yield w
    finally:
        await session.close()
        await server.close()
        writer_task.cancel()
        await pool.close()


@asynccontextmanager
async def worker(w: World, dsn: str) -> AsyncIterator[TestServer]:
    """An HTTP worker beside the world's leader (or a standby): the app answering from a
    replica of what the leader wrote to PostgreSQL, once it has read all of it."""
    replica = Replica(w.monitor.directory, Registry(), restored_for=3600)
    task = asyncio.create_task(replica.run(dsn))
    rt = Runtime(config=w.runtime.config, directory=w.monitor.directory, texts=w.runtime.texts)
    rt.monitor, rt.not_ready = replica, None
    server = TestServer(make_app(rt), host="127.0.0.1")
    await server.start_server()
    try:
        deadline = time.monotonic() + 10
        while not replica.first_round_done:
            assert time.monotonic() < deadline, "the replica has not read everything"
            await asyncio.sleep(0.01)
        yield server
    finally:
        await server.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass
class Restarted:
    """Another monitor process on the world's database, started after the world's own
    stopped: how many incidents it took up, and its own simulated network to advance."""

    monitor: Monitor
    net: SimNet
    taken: int
    clock: dict[str, float]

    def run(self, seconds: float) -> None:
        self.net.run_for(seconds)
        self.clock["now"] = self.net.now
        self.monitor.tick()


@asynccontextmanager
async def restarted(w: World, at: float) -> AsyncIterator[Restarted]:
    """A monitor started at `at` (on the monitor's clock) that took up what the world's
    monitor stored, writing as it runs; its writes drained at the end."""
    clock = {"now": at}
    again = Monitor(w.monitor.config, w.runtime.directory, Registry(),
                    Writer(w.pool, 10_000, Registry()), clock=lambda: clock["now"])  # fmt: skip
    assert again.writer is not None
    writer_task = asyncio.create_task(again.writer.run())
    try:
        taken = await again.restore(w.pool)
        net = SimNet(w.runtime.directory.topology, again.correlator, interval=5.0,
                     timeout=1.0, start=at)  # fmt: skip
        net.on_event = again.handle
        yield Restarted(again, net, taken, clock)
        assert await again.writer.drain(10)
    finally:
        writer_task.cancel()
