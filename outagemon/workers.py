"""HTTP workers: processes serving one listening socket that answer `/check` and the
read API from a replica of the incident state (`cluster/replica.py`), so no correlator
work ever delays a caller. The prober and the correlator stay in the daemon's process.

With `[http] workers = N` > 1, `start()` — called once the config and the directory are
loaded, before the event loop runs — binds the port (one socket, one accept queue) and
forks a supervisor, which forks N workers and forks a new one in place of any that dies.
Every worker inherits the listening socket; a new one accepts only once its replica is
read (when another worker answers meanwhile), and a retiring one closes only its own copy
of the socket and finishes its connections, so a reload resets no connection waiting in
the queue. Both are forks of a process holding the loaded directory and topology: the
memory is shared copy-on-write (`gc.freeze()` first, so the collector's bookkeeping does
not copy every page). The daemon's own process then listens on a Unix socket only
(`Workers.socket`): the workers forward to it every request they do not answer
themselves (writes, the page, its streams, /metrics).

Each worker logs through structlog with `worker` and `pid` bound; the supervisor and
the workers die with the daemon (PR_SET_PDEATHSIG) and stop on its SIGTERM. What the
supervisor and the workers count is in a shared memory block (`Slots`), which the
daemon's /metrics reads.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import dataclasses
import gc
import mmap
import os
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog
from aiohttp import hdrs, web

from outagemon import logs
from outagemon.cluster.replica import CallRecord, Replica
from outagemon.config import Config
from outagemon.core.addresses import PhonePlan
from outagemon.core.directory import Directory
from outagemon.core.messages import Texts
from outagemon.db import store
from outagemon.errors import OutagemonError
from outagemon.http import fastcheck
from outagemon.http.app import CALLS_PATH, make_app
from outagemon.http.app import runner as http_runner
from outagemon.http.runtime import Runtime
from outagemon.metrics import LoopLag, Registry

log = logs.get("outagemon.workers")
T = TypeVar("T")

WORKER_HEADER = "X-Outagemon-Worker"  # "index/pid" of the worker that answered
RESTART_DELAY = 0.5  # s: the least time between two starts of one worker
READY_WITHIN = 60.0  # s: a new worker accepts then even if its replica was not read
DRAIN = 2.0  # s: a retiring worker's keep-alive connections get this long to ask again
BACKLOG = 1024  # the shared accept queue (the kernel caps it at net.core.somaxconn)
BACKGROUND_NICE = 19  # a reload's loading thread: the workers answer first
_PR_SET_PDEATHSIG = 1
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, never forwarded.
_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Content-Length",
))  # fmt: skip

# The shared block: a header (workers alive, restarts), then a slot per worker.
_HEAD = 2
_FIELDS = ("pid", "lag", "lag_max", "full_reads", "connected", "checks", "ready",
           "hold_max", "hold_recent", "holds_5ms")  # fmt: skip
HOLD_WINDOW = 4  # reports (of 0.5 s) the recent loop hold is the worst of
_SLOT = len(_FIELDS)


class Slots:
    """Doubles in anonymous shared memory (made before the fork, so every process of the
    daemon sees the same pages): written by the supervisor and the workers, read by the
    daemon's /metrics."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._mem = mmap.mmap(-1, 8 * (_HEAD + _SLOT * workers))

    def _at(self, i: int) -> float:
        value: float = struct.unpack_from("d", self._mem, 8 * i)[0]
        return value

    def _put(self, i: int, value: float) -> None:
        struct.pack_into("d", self._mem, 8 * i, value)

    @property
    def alive(self) -> int:
        return int(self._at(0))

    @alive.setter
    def alive(self, n: int) -> None:
        self._put(0, n)

    @property
    def restarts(self) -> int:
        return int(self._at(1))

    @restarts.setter
    def restarts(self, n: int) -> None:
        self._put(1, n)

    def get(self, worker: int, name: str) -> float:
        return self._at(_HEAD + _SLOT * worker + _FIELDS.index(name))

    def put(self, worker: int, name: str, value: float) -> None:
        self._put(_HEAD + _SLOT * worker + _FIELDS.index(name), value)


class Workers:
    """The daemon's side of its HTTP workers: the supervisor's pid, the socket the daemon
    listens on for what the workers forward, and the shared counts."""

    def __init__(self, config: Config, directory: Directory, texts: Texts,
                 tls: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.config = config
        self.tls = tls
        self.directory = directory
        self.texts = texts
        self.count = config.http.workers
        self.slots = Slots(self.count)
        self._dir: Path | None = None  # made by start(): 0700, the daemon's socket in it
        self.socket = Path()
        self.supervisor: int | None = None
        self.listening: socket.socket | None = None  # the port: bound by start(), inherited

    def start(self) -> None:
        """Bind the port and fork the supervisor (which forks the workers). Call before any
        event loop runs and after the directory is loaded. OutagemonError when the port is
        taken."""
        self.listening = _bind(self.config.http.host, self.config.http.port,
                               self.config.http.listen)  # fmt: skip
        self._dir = Path(tempfile.mkdtemp(prefix="outagemon-http-"))
        self.socket = self._dir / "daemon.sock"
        gc.collect()
        gc.freeze()  # the loaded directory's objects: left alone by the collector
        pid = os.fork()
        if pid == 0:  # the supervisor
            code = 1
            try:
                code = _Supervisor(self).run()
            finally:
                os._exit(code)
        self.supervisor = pid
        self.listening.close()  # this process never accepts: its copy only
        log.info("workers.started", workers=self.count, supervisor=pid, socket=str(self.socket))

    def reload(self) -> None:
        """The daemon took a reload: the supervisor loads the configuration and the
        directory again and replaces the workers one at a time (each new one answers
        before the old one stops: no moment without answers)."""
        if self.supervisor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor, signal.SIGHUP)

    def stop(self, within: float = DRAIN + 3.0) -> None:
        """Stop the supervisor and its workers; wait `within` seconds, then kill."""
        pid, self.supervisor = self.supervisor, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.02)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def collect_into(self, metrics: Registry) -> None:
        """The workers' counts on the daemon's /metrics."""
        alive = metrics.gauge("outagemon_http_workers_alive", "HTTP worker processes running.")
        restarts = metrics.counter(
            "outagemon_http_worker_restarts_total", "HTTP workers started again after dying."
        )
        lag = metrics.gauge(
            "outagemon_replica_lag_seconds",
            "From the leader's commit to a replica having it (its last change applied).",
        )
        lag_max = metrics.gauge(
            "outagemon_replica_lag_max_seconds", "The longest replica lag since it started."
        )
        connected = metrics.gauge("outagemon_replica_connected", "1 while a replica listens.")
        checks = metrics.counter("outagemon_worker_checks_total", "Check answers by worker.")
        hold_max = metrics.gauge(
            "outagemon_worker_loop_hold_max_seconds",
            "Longest a worker's event loop was held since it accepts (a timer's lateness).",
        )
        hold_recent = metrics.gauge(
            "outagemon_worker_loop_hold_recent_seconds",
            "Longest a worker's event loop was held in the last two seconds.",
        )
        holds = metrics.counter(
            "outagemon_worker_loop_holds_5ms_total",
            "Times a worker's event loop was held more than 5 ms (a timer that late).",
        )

        def collect() -> None:
            s = self.slots
            alive.set(s.alive)
            restarts.set(s.restarts)
            for m in (lag, lag_max, connected, hold_max, hold_recent, holds):
                m.values.clear()  # a dead worker's pid goes with it
            for i in range(self.count):
                w = {"worker": str(i), "pid": str(int(s.get(i, "pid")))}
                lag.set(s.get(i, "lag"), **w)
                lag_max.set(s.get(i, "lag_max"), **w)
                connected.set(s.get(i, "connected"), **w)
                hold_max.set(s.get(i, "hold_max"), **w)
                hold_recent.set(s.get(i, "hold_recent"), **w)
                holds.set(s.get(i, "holds_5ms"), **w)
                checks.set(s.get(i, "checks"), worker=str(i))

        metrics.on_collect(collect)


class _Supervisor:
    """Forks the workers and forks again any that dies, until SIGTERM (or the daemon's
    death). A plain loop on waitpid: no event loop runs in this process."""

    def __init__(self, workers: Workers) -> None:
        self.w = workers
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> last start
        self.stopping = False
        self.reload_wanted = False
        self.retired: set[int] = set()  # old workers stopped after a reload

    def run(self) -> int:
        _die_with_parent()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, self._reload_wanted)
        for i in range(self.w.count):
            self._fork(i)
        while not self.stopping or self.pids:
            if self.reload_wanted and not self.stopping:
                self.reload_wanted = False
                self._reload()
            if not self._reap():
                time.sleep(0.05)
        return 0

    def _reap(self) -> bool:
        """One child that ended, if any: forked again unless stopping or retired."""
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return False
        index = self.pids.pop(pid, None)
        self.w.slots.alive = len(self.pids)
        if index is None or self.stopping or pid in self.retired:
            self.retired.discard(pid)
            return True
        log.warning("workers.died", worker=index, pid=pid, status=_status(status))
        wait = self.started.get(index, 0.0) + RESTART_DELAY - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if not self.stopping:
            self.w.slots.restarts = self.w.slots.restarts + 1
            # Another worker answers meanwhile: the new one waits for its replica.
            others = any(i != index for i in self.pids.values())
            self._fork(index, gated=others)
        return True

    def _reload_wanted(self, signum: int, frame: Any) -> None:
        self.reload_wanted = True

    def _reload(self) -> None:
        """Load what the daemon just reloaded, then replace each worker: the new one is
        forked, and the old one stopped once the new one has read the incident state."""
        from outagemon import config as config_mod
        from outagemon.core import directory, messages

        def load() -> tuple[Config, Texts, Directory]:
            cfg = config_mod.load(self.w.config.path)
            texts = messages.load(cfg.messages.language, cfg.messages.file,
                                  cfg.messages.timezone)  # fmt: skip
            # As the daemon's: callers behind a suspected incident hear [callers] sentence.
            texts = dataclasses.replace(texts, suspected=cfg.callers.sentence)
            loaded = directory.load(cfg.topology.file, cfg.topology.subscribers,
                                    PhonePlan.of(cfg.topology.phones))  # fmt: skip
            # Made here, as the daemon makes it: else each new worker would scan the
            # roster on its event loop at its first question with a flat that is no number.
            loaded.directory.named_flats()
            gc.collect()
            gc.freeze()
            return cfg, texts, loaded.directory

        started = time.monotonic()
        try:
            # Seconds of CPU for a big city: in a thread of low priority, so the workers
            # (forked from this, the main thread, at its priority) answer first.
            self.w.config, self.w.texts, self.w.directory = in_background(load)
        except Exception as e:  # the daemon took it a moment ago: changed since?
            log.error("workers.reload_failed", error=str(e) or type(e).__name__)
            return
        for index in range(self.w.count):
            old = [pid for pid, i in self.pids.items() if i == index]
            self.w.slots.put(index, "ready", 0)
            new = self._fork(index, gated=True)
            deadline = time.monotonic() + READY_WITHIN + 5
            while self.w.slots.get(index, "ready") != new and time.monotonic() < deadline:
                if self.stopping:
                    return
                if not self._reap():
                    time.sleep(0.05)
            for pid in old:
                self.retired.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        log.info("workers.reloaded", workers=self.w.count,
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _fork(self, index: int, gated: bool = False) -> int:
        """A worker; `gated`: it accepts once its replica is read (another one answers)."""
        self.started[index] = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = _worker(self.w, index, gated)
            except BaseException as e:
                log.error("workers.failed", worker=index, error=repr(e))
            finally:
                os._exit(code)
        self.pids[pid] = index
        self.w.slots.alive = len(self.pids)
        self.w.slots.put(index, "pid", pid)
        return pid


def _bind(host: str, port: int, listen: str) -> socket.socket:
    """The port's one listening socket, which every worker inherits: one accept queue, so
    a worker that stops leaves what waits in it to the others. No SO_REUSEPORT: a port
    taken (by another daemon too) refuses the start, as it does the daemon alone."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as e:
        raise OutagemonError(f"cannot listen on {listen}: {e.strerror}.") from None


def lower_priority() -> None:
    """This thread's CPU priority lowered (BACKGROUND_NICE), the process's other threads
    left as they are (Linux: a thread's native id names it to setpriority)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def in_background(work: Callable[[], T]) -> T:
    """`work()` in a thread of its own whose CPU priority is lowered (a thread has its own
    nice value on Linux; raising it needs no privilege), waited for by this thread, which
    keeps its priority (and passes it on to what it forks)."""
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        lower_priority()
        try:
            done.append(work())
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=run, name="outagemon-background")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return done[0]


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """SIGTERM this process when the one that forked it dies (a kill -9 of the daemon)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM still reaches
        pass


# -- a worker ----------------------------------------------------------------------------


def _worker(w: Workers, index: int, gated: bool) -> int:
    _die_with_parent()
    structlog.contextvars.bind_contextvars(worker=index, pid=os.getpid())
    first_in_line(w.config.http.workers_nice)
    return asyncio.run(_serve(w, index, gated))


def first_in_line(nice: int) -> bool:
    """This worker's CPU priority raised to `nice` (`[http] workers_nice`), whether it was.

    On two cores the workers, the correlator, the database's backends and whatever else
    runs take turns; a worker woken by a caller waited for a core 0.16-0.32 s in every
    second while a core failure was decided (/proc/PID/schedstat). Taken first, it waits
    0.03-0.05 s/s. Lowering a nice value needs CAP_SYS_NICE or an RLIMIT_NICE that allows
    it (systemd: LimitNICE=); without either the worker keeps the daemon's, and says so.
    Called in the new worker before it starts a thread (a thread takes its creator's)."""
    if nice >= os.getpriority(os.PRIO_PROCESS, 0):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        log.info("workers.priority_kept", nice=nice, error=e.strerror,
                 hint="allow it with LimitNICE= in the unit, or CAP_SYS_NICE; "
                      "or set [http] workers_nice = 0")  # fmt: skip
        return False
    return True


async def _serve(w: Workers, index: int, gated: bool) -> int:
    cfg = w.config
    assert w.listening is not None
    rt = Runtime(config=cfg, directory=w.directory, texts=w.texts)
    rt.not_ready = "the worker is reading the incident state"
    replica = Replica(w.directory, rt.metrics, cfg.messages.restored_for)
    rt.monitor = replica
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks: list[asyncio.Task[Any]] = []
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(w.socket)),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        auto_decompress=False,
    )
    app = make_app(rt, _forwarder(session))

    retiring = False

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = f"{index}/{os.getpid()}"
        if retiring:  # the caller's next request goes to another worker
            response.force_close()  # (the headers are made before this hook: say it too)
            response.headers[hdrs.CONNECTION] = "close"

    app.on_response_prepare.append(mark)
    runner = http_runner(app)
    await runner.setup()
    accepting = asyncio.Event()
    try:
        tasks.append(asyncio.create_task(replica.run(cfg.database.dsn), name="replica"))
        tasks.append(asyncio.create_task(_pool(rt), name="pool"))
        lag = LoopLag(rt.metrics)
        tasks.append(asyncio.create_task(lag.run(), name="loop_lag"))
        tasks.append(asyncio.create_task(_report(w, index, rt, replica, accepting, lag),
                                         name="report"))  # fmt: skip
        tasks.append(asyncio.create_task(_send_calls(session, replica), name="calls"))
        if gated:  # another worker answers meanwhile: not before the replica is read
            waited = time.monotonic()
            while not replica.first_round_done and time.monotonic() - waited < READY_WITHIN:
                if stop.is_set():
                    return 0
                await asyncio.sleep(0.02)
            if replica.first_round_done:
                rt.not_ready = None  # its first answer says ready (_report says it later)
        # /check on the fast path (http/fastcheck.py); everything else is aiohttp's.
        site = fastcheck.Site(runner, rt, sock=w.listening, ssl_context=w.tls,
                              headers={WORKER_HEADER: f"{index}/{os.getpid()}"})  # fmt: skip
        await site.start()
        accepting.set()
        log.info("worker.listening", listen=cfg.http.listen, ready=replica.first_round_done)
        await stop.wait()
        log.info("worker.stopping")
        # Only this process's copy of the listening socket is closed: what waits in the
        # queue is the other workers'. The connections held here are answered "close".
        retiring = True
        await drain(site, runner)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await session.close()
        if rt.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rt.pool.close(), 1)
    return 0


async def drain(site: fastcheck.Site, runner: web.AppRunner) -> None:
    """A retiring worker's last moments: it stops accepting (the site's answers say
    "close" from now), then waits up to DRAIN for the connections it holds to end. The
    drain only waits: what is still open then is closed by its owner, the site (its
    fast-path connections, in runner.cleanup's Site.stop) or aiohttp's server."""
    await site.retire()
    drained = time.monotonic() + DRAIN
    while site.connections or (runner.server is not None and runner.server.connections):
        if time.monotonic() > drained:
            break
        await asyncio.sleep(0.02)


async def _pool(rt: Runtime) -> None:
    """A small pool for the read API's resolved incidents, connected in the background."""
    delay = 0.5
    while rt.pool is None:
        try:
            rt.pool = await store.connect(rt.config.database.dsn, min_size=1, max_size=3,
                                          statement_timeout=rt.config.database.timeout)  # fmt: skip
        except Exception as e:
            rt.database = f"the database does not answer yet ({e})"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    rt.database = None


async def _report(w: Workers, index: int, rt: Runtime, replica: Replica,
                  accepting: asyncio.Event, loop: LoopLag) -> None:  # fmt: skip
    """Readiness from the replica, and the worker's counts into the shared block (its
    loop's holds counted from when it accepts: its start-up delays no caller)."""
    lag = rt.metrics.gauge("outagemon_replica_lag_seconds", "")
    lag_max = rt.metrics.gauge("outagemon_replica_lag_max_seconds", "")
    reads = rt.metrics.counter("outagemon_replica_full_reads_total", "")
    s = w.slots
    said_ready = False
    recent: list[float] = []
    hold_max, holds_before = 0.0, 0
    while True:
        held = loop.take_recent()
        holds = sum(loop.histogram.counts[bisect.bisect_right(loop.histogram.bounds, 0.005) :])
        if not accepting.is_set():
            held, holds_before = 0.0, holds
        hold_max = max(hold_max, held)
        recent = [*recent[1 - HOLD_WINDOW :], held]
        s.put(index, "hold_max", hold_max)
        s.put(index, "hold_recent", max(recent))
        s.put(index, "holds_5ms", holds - holds_before)
        connected = replica.connected.is_set()
        rt.not_ready = None if replica.first_round_done else rt.not_ready
        s.put(index, "connected", 1.0 if connected else 0.0)
        s.put(index, "lag", lag.get())
        s.put(index, "lag_max", lag_max.get())
        s.put(index, "full_reads", reads.get())
        s.put(index, "checks", sum(rt.checks.values.values()))
        if replica.first_round_done and accepting.is_set() and not said_ready:
            said_ready = True  # once: a worker being replaced must not say it again
            s.put(index, "ready", os.getpid())
        await asyncio.sleep(0.05 if not replica.first_round_done else 0.5)


async def _send_calls(session: aiohttp.ClientSession, replica: Replica) -> None:
    """The calls this worker's answers named, and its callers' records (for the calls'
    detector, core/calls.py), to the daemon's process every second: it counts them as its
    own answers' and hands the records to its Monitor as if it had answered them (their
    time is when they arrive there: at most a second late, against a detector's window of
    minutes). In bodies the daemon takes (see `call_batches`)."""
    while True:
        await asyncio.sleep(1.0)
        counts = replica.take_calls()
        records = replica.take_records()
        for body, calls, taken in call_batches(counts, records):
            try:
                async with session.post(f"http://daemon{CALLS_PATH}", data=body,
                                        headers=_JSON) as r:  # fmt: skip
                    r.raise_for_status()
            except (aiohttp.ClientError, OSError) as e:
                log.warning("worker.calls_not_sent", calls=calls, records=taken,
                            error=str(e))  # fmt: skip


CALLS_BODY = 48 * 1024  # bytes of JSON at most in one body (the daemon takes 64 KiB)
_JSON = {hdrs.CONTENT_TYPE: "application/json"}


def call_batches(counts: dict[int, int],
                 records: list[CallRecord]) -> Iterator[tuple[bytes, int, int]]:  # fmt: skip
    """The JSON bodies that carry the counts (in the first) and the records, each at most
    CALLS_BODY bytes (a record is far smaller: a query's line is 8 KiB at most); with the
    calls and records each carries."""
    head = b'{"counts":' + orjson.dumps({str(k): v for k, v in counts.items()})

    def body(first: bool, piece: list[bytes]) -> tuple[bytes, int, int]:
        start = head if first else b'{"counts":{}'
        return (start + b',"records":[' + b",".join(piece) + b"]}",
                sum(counts.values()) if first else 0, len(piece))  # fmt: skip

    piece: list[bytes] = []
    size = len(head) + 16
    first = True
    for r in records:
        one = orjson.dumps(r)
        if piece and size + len(one) > CALLS_BODY:
            yield body(first, piece)
            first, piece, size = False, [], 32
        piece.append(one)
        size += len(one) + 1
    if piece or (first and counts):
        yield body(first, piece)


def _forwarder(session: aiohttp.ClientSession) -> Any:
    """A handler that hands the request to the daemon's process and streams its answer
    back (the page's event stream included)."""

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CALLS_PATH):
            raise web.HTTPNotFound()  # the workers' own, never a caller's
        # The caller's own X-Forwarded-* are dropped: only the worker says who asked.
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP and not k.lower().startswith("x-forwarded")
        }
        headers[hdrs.X_FORWARDED_FOR] = request.remote or ""
        headers[hdrs.X_FORWARDED_PROTO] = request.scheme
        body = await request.read() if request.can_read_body else None
        try:
            upstream = await session.request(request.method, f"http://daemon{request.path_qs}",
                                             headers=headers, data=body,
                                             allow_redirects=False)  # fmt: skip
        except (aiohttp.ClientError, OSError) as e:
            log.warning("worker.forward_failed", path=request.path, error=str(e))
            return web.json_response({"error": "the daemon's process does not answer right now."},
                                     status=503)  # fmt: skip
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    response.headers.add(k, v)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response

    return forward
