"""What the alert tests talk to: an aiohttp receiver in a thread of its own (so a test that
sleeps, or a daemon in a network namespace, can reach it), and a real Alertmanager."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from outagemon.testing.lab import Lab
from tests.conftest import free_port, short_tmp_dir

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived
    wall: float  # time.time() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP receiver on a loopback port (inside `lab`'s namespace when given) that keeps
    every request and answers `status`; `stop()` closes its socket (connections refused),
    `start()` opens it again on the same port."""

    def __init__(self, lab: Lab | None = None, status: int = 200) -> None:
        self.lab = lab
        self.status = status
        self.port = free_port()
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._call(self._runner.setup())
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self._received.append(Received(request.path, dict(request.headers), body,
                                           time.monotonic(), time.time()))  # fmt: skip
        return web.Response(status=self.status, text="ok" if self.status < 300 else "no")

    def start(self) -> None:
        # A socket belongs to the namespace it is made in.
        with self.lab.entered() if self.lab is not None else contextlib.nullcontext():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(128)
        assert self._runner is not None
        self._site = web.SockSite(self._runner, sock)
        self._call(self._site.start())

    def stop(self) -> None:
        if self._site is not None:
            self._call(self._site.stop())
            self._site = None

    def close(self) -> None:
        self.stop()
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]


def wait_for(what: str, condition: Callable[[], Any], within: float = 30.0,
             detail: Callable[[], str] = lambda: "") -> Any:  # fmt: skip
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {within} s {detail()}")


AM_CONFIG = """
route:
  receiver: test
  group_by: [incident_id]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 3s  # the next notification soon: it carries the latest annotations
receivers:
  - name: test
    webhook_configs:
      - url: {url}/am
        send_resolved: true
"""


class Alertmanager:
    """A real Alertmanager on a free loopback port (its storage in a temporary directory),
    alone or a peer of others; its notifications go to `receiver`."""

    def __init__(
        self,
        receiver: Receiver,
        lab: Lab | None = None,
        peers: list[Alertmanager] | None = None,
        cluster: bool = False,
    ) -> None:
        self.dir = short_tmp_dir()
        self.port = free_port()
        self.cluster_port = free_port() if cluster or peers else 0
        (self.dir / "am.yml").write_text(AM_CONFIG.format(url=receiver.url))
        argv = [
            ALERTMANAGER,
            f"--config.file={self.dir / 'am.yml'}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address="
            + (f"127.0.0.1:{self.cluster_port}" if self.cluster_port else ""),
            "--cluster.advertise-address="
            + (f"127.0.0.1:{self.cluster_port}" if self.cluster_port else ""),
            "--cluster.gossip-interval=200ms",
            "--cluster.pushpull-interval=2s",
            "--log.level=warn",
        ]
        argv += [f"--cluster.peer=127.0.0.1:{p.cluster_port}" for p in peers or []]
        self.lab = lab
        self.log = (self.dir / "am.log").open("wb")
        self.process = subprocess.Popen(lab.command(*argv) if lab else argv,
                                        stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for("alertmanager ready", self.ready, 30, self.log_text)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return (self.dir / "am.log").read_text(errors="replace")[-3000:]

    def _inside(self) -> contextlib.AbstractContextManager[None]:
        return self.lab.entered() if self.lab is not None else contextlib.nullcontext()

    def get(self, path: str) -> Any:
        with self._inside(), urllib.request.urlopen(self.url + path, timeout=3) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log_text()
        try:
            with self._inside(), urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v2/alerts"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@contextlib.contextmanager
def alertmanagers(
    receiver: Receiver, n: int = 1, lab: Lab | None = None
) -> Iterator[list[Alertmanager]]:
    started: list[Alertmanager] = []
    try:
        for _ in range(n):
            started.append(Alertmanager(receiver, lab, peers=list(started), cluster=n > 1))
        yield started
    finally:
        for am in started:
            am.close()


def am_notifications(receiver: Receiver) -> list[dict[str, Any]]:
    """Alertmanager's webhook notifications the receiver got, as JSON."""
    return [r.json() for r in receiver.received("/am")]
