"""What a reload makes in its thread is named by its sizes, never listed: the thread's
result is the future the event loop wakes on, and asyncio's repr of that wake-up (a
slow-callback warning in debug mode, a task's repr, the loop benchmark's --profile)
listed the plan's every (due, target) pair on the loop: 140 ms at 100,000 subscribers."""

from __future__ import annotations

import asyncio

from outagemon.config import ProbeConfig
from outagemon.core import topology as topology_mod
from outagemon.core.topology import Node, Topology
from outagemon.probing.icmp import IcmpSource, Retarget
from outagemon.probing.scheduler import Scheduler


class _Engine:
    on_result: object = None


def town(routers: int, moved: int = 0) -> Topology:
    nodes = [Node("uplink", "core", "127.0.0.1"), Node("sw", "access", "127.0.0.2", ("uplink",))]
    nodes += [Node(f"cpe{i}", "cpe", f"127.1.{i // 250}.{i % 250 + 1}", ("sw",))
              for i in range(moved, routers)]  # fmt: skip
    nodes += [Node(f"cpe{i}", "cpe", f"127.2.{i // 250}.{i % 250 + 1}", ("sw",))
              for i in range(moved)]  # fmt: skip
    return Topology(nodes)


def reload_result(routers: int) -> tuple[Retarget, topology_mod.Change]:
    old, new = town(routers), town(routers, moved=routers // 10)
    source = IcmpSource(ProbeConfig())
    source.scheduler = Scheduler(_Engine(), lambda o: None, 10.0, 1000.0,  # type: ignore[arg-type]
                                 clock=lambda: 1000.0)  # fmt: skip
    source.scheduler.set_targets(old.by_ip)
    return source.plan(new.by_ip, ProbeConfig()), topology_mod.change(old, new)


def test_a_reloads_plan_and_change_are_named_by_their_sizes() -> None:
    retarget, change = reload_result(20_000)
    assert len(retarget.schedule.heap) == 20_002 and len(change.changed) == 2_001
    for made in (retarget, retarget.schedule, change):
        assert len(repr(made)) < 200, repr(made)[:300]
    assert "20002 in the heap" in repr(retarget.schedule)
    assert "2000 gone" in repr(retarget.schedule) and "2000 new" in repr(retarget.schedule)
    assert repr(change) == "Change(2001 changed, 0 gone)"
    assert repr(retarget).startswith("Retarget(20002 targets, Plan(interval=10, ")


async def test_the_loops_wakeup_on_a_reloads_result_is_shown_without_listing_it() -> None:
    loop = asyncio.get_running_loop()
    small, large = reload_result(100), reload_result(20_000)
    shown = []
    for result in (small, large):
        done: asyncio.Future[object] = loop.create_future()
        done.set_result(result)
        handle = asyncio.Handle(print, (done,), loop)
        shown.append(repr(handle))
        # reprlib cuts what it shows, after the whole repr was made: what was made counts
        assert all(len(repr(x)) < 200 for x in result)
    assert len(shown[1]) - len(shown[0]) < 20
