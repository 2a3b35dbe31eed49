"""Who leads: a lease row on the database's clock, renewed every third of its length.

Every node runs `Leadership.run()`. The one whose `take_lease` succeeds leads under an
epoch (a number that goes up each time the lease changes hands or lapses); the others
stand by and try again every third of the lease. No clock of any host is compared with
another's: the lease expires on the database's clock, and a leader trusts its lease only
until its own monotonic clock says the lease could have run out (counted from before it
asked, less a margin), so a leader that cannot renew (paused, cut off, its database
slow) stops deciding by itself before anyone else may start.

Fencing (`refused`): every write of an incident checks, in its own transaction, that the
epoch it was decided under still holds (`store.holds_lease`); a write refused so is
counted, never retried, and the node steps down. Advisory locks were not used: they are
held by a session, which PgBouncer's transaction pooling does not keep, and a
split-brain would then be bounded only by TCP keepalive.

The seam for the rest of the daemon: `role`, `epoch`, `leader` (who leads, as last
seen), `deciding()` (the epoch to decide under, or None), `serving` (leading with the
open incidents taken up: this process's own state is the truth), `changed` (an
asyncio.Event set when this node leads, when it has taken the incidents up, and when it
steps down), `on_step_down()` callbacks, and the `on_lead` given to `run()`. A standby
answers from a replica of the leader's state while `serving` is False.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable

import asyncpg

from outagemon import logs
from outagemon.db import store
from outagemon.db.writer import UNAVAILABLE
from outagemon.metrics import Registry

log = logs.get("outagemon.cluster")

# What a leader keeps off its lease, on its own clock: a margin for the database's clock
# running a little faster than ours, and for the scheduling of the event loop.
MARGIN_SHARE = 1 / 6
MARGIN_MAX = 2.0


class Role(enum.StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


class StepDown(enum.StrEnum):
    """Why a leader stopped leading."""

    EXPIRED = "expired"  # it could not renew before its lease ran out (its own clock)
    LOST = "lost"  # it asked to renew and another node held the lease
    FENCED = "fenced"  # a write of its was refused: the epoch had moved on
    FAILED = "failed"  # it could not take up what the database holds
    STOPPED = "stopped"  # the daemon stops


OnLead = Callable[[int], Awaitable[None]]
OnStepDown = Callable[[int, StepDown], None]


class Leadership:
    """This node's role, kept by renewing the lease; see the module's docstring."""

    def __init__(self, node: str, lease: float, metrics: Registry,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.holder = node
        self.lease = lease
        self.margin = min(lease * MARGIN_SHARE, MARGIN_MAX)
        self.role = Role.STANDBY
        self.epoch: int | None = None  # held while leading
        # The epoch under which the open incidents were taken up (on_lead done): from then
        # on this node decides, and answers from its own state.
        self.taken_up: int | None = None
        self.leader: str = ""  # who leads, as last seen ("" unknown)
        self.leader_epoch = 0  # the epoch last seen in the lease row
        self.changed = asyncio.Event()  # set at every change of role (cleared by who waits)
        self._monotonic = monotonic
        self._valid_until = 0.0  # our clock: until when our lease surely holds
        self._renewed = 0.0  # our clock: the last renewal (or sighting of the leader's)
        self._on_step_down: list[OnStepDown] = []
        self._taking_up: asyncio.Task[None] | None = None
        self._role = metrics.gauge("outagemon_cluster_role", "1 for this node's role.")
        self._epoch = metrics.gauge("outagemon_cluster_epoch", "The lease's epoch, as last seen.")
        self._age = metrics.gauge(
            "outagemon_cluster_lease_age_seconds",
            "Seconds since the lease was last renewed (by this node, or the leader as seen).",
        )
        self._stepdowns = metrics.counter(
            "outagemon_cluster_stepdowns_total", "Times this node stopped leading, by reason."
        )
        self._fenced = metrics.counter(
            "outagemon_cluster_fenced_writes_total",
            "Writes of an epoch that no longer holds: refused by the database's check, "
            "or dropped unmade from the queue when this node stepped down.",
        )
        self._leads = metrics.counter(
            "outagemon_cluster_takeovers_total", "Times this node began to lead."
        )
        metrics.on_collect(self._collect)
        self._show()

    # -- what the rest of the daemon asks ----------------------------------------------

    def deciding(self) -> int | None:
        """The epoch to decide under now, or None: standing by, or the lease may have run
        out (then this node steps down at once, whatever the database says later)."""
        if self.epoch is None:
            return None
        if self._monotonic() >= self._valid_until:
            self.step_down(StepDown.EXPIRED)
            return None
        return self.epoch

    @property
    def serving(self) -> bool:
        """Leading, with the open incidents taken up: this node's own state is the truth
        (on a standby, the leader's state is read from the database instead)."""
        return self.taken_up is not None and self.deciding() == self.taken_up

    def not_leading(self) -> str | None:
        """Why an engineer's write cannot be taken on this node (it stands by), else None."""
        if self.serving:
            return None
        if self.epoch is not None:
            return "this node is taking the lead over; try again in a moment."
        if self.leader and self.leader != self.holder:
            return f"this node stands by; {self.leader} leads: write there."
        return "this node does not lead now; try again in a moment."

    def refused(self, epoch: int, write: str) -> None:
        """A write decided under `epoch` was fenced off: counted; if that is the epoch this
        node leads under, it does not lead any more."""
        self._fenced.inc(how="refused")
        log.error("cluster.write_fenced", write=write, epoch=epoch, holder=self.holder)
        if epoch == self.epoch:
            self.step_down(StepDown.FENCED)

    def dropped(self, writes: int) -> None:
        """Writes of an old epoch dropped unmade from the queue (counted with the refused)."""
        if writes:
            self._fenced.inc(writes, how="dropped")

    def on_step_down(self, callback: OnStepDown) -> None:
        self._on_step_down.append(callback)

    def step_down(self, reason: StepDown) -> None:
        """Stop leading now: nothing more is decided or written under the epoch."""
        epoch = self.epoch
        if epoch is None:
            return
        self.epoch = None
        self.taken_up = None
        self.role = Role.STANDBY
        self._valid_until = 0.0
        if self.leader == self.holder:
            self.leader = ""  # who leads now is known at the next try for the lease
        self._stepdowns.inc(reason=reason.value)
        log.warning("cluster.stepped_down", reason=reason.value, epoch=epoch, node=self.holder)
        if self._taking_up is not None and not self._taking_up.done():
            self._taking_up.cancel()
        for callback in self._on_step_down:
            callback(epoch, reason)
        self._show()
        self.changed.set()

    # -- the lease -----------------------------------------------------------------------

    async def run(self, pool: asyncpg.Pool, on_lead: OnLead) -> None:
        """Take or renew the lease every third of it, for ever; `on_lead(epoch)` runs when
        this node begins to lead (restore, then decide) while the renewals go on; it is
        cancelled if the node steps down meanwhile."""
        period = self.lease / 3
        try:
            while True:
                started = self._monotonic()
                try:
                    await self._renew(pool, started)
                except Exception as e:  # the loop must outlive any one try
                    # The database is away (or a connection broke in an odd way): try again;
                    # `deciding()` gives up on its own clock meanwhile.
                    log.warning("cluster.renew_failed", error=str(e) or type(e).__name__,
                                role=self.role.value)  # fmt: skip
                    if isinstance(e, TimeoutError) and self.epoch is None:
                        await self._cut_off_stale(pool)
                if self.epoch is not None and self._taking_up is None:
                    self._taking_up = asyncio.create_task(self._take_up(on_lead, self.epoch))
                await asyncio.sleep(max(0.0, period - (self._monotonic() - started)))
        finally:
            if self._taking_up is not None:
                self._taking_up.cancel()

    async def _take_up(self, on_lead: OnLead, epoch: int) -> None:
        try:
            await on_lead(epoch)
            if self.epoch == epoch:
                self.taken_up = epoch
                log.info("cluster.serving", epoch=epoch, node=self.holder)
                self.changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the database failed us meanwhile: give the lease up
            log.error("cluster.take_up_failed", error=str(e) or type(e).__name__, epoch=epoch)
            if self.epoch == epoch:
                self.step_down(StepDown.FAILED)

    async def _cut_off_stale(self, pool: asyncpg.Pool) -> None:
        """A renewal that timed out may be waiting for a lapsed holder's fenced write that
        will never finish (its process paused mid-statement): that holder's sessions on
        the lease row are ended (`store.cut_off_stale_holder`)."""
        try:
            async with asyncio.timeout(self.lease / 3), pool.acquire() as conn:
                ended = await store.cut_off_stale_holder(conn, self.holder)
        except Exception as e:
            log.warning("cluster.cut_off_failed", error=str(e) or type(e).__name__)
            return
        if ended:
            log.warning("cluster.stale_holder_cut_off", sessions=ended)

    async def _renew(self, pool: asyncpg.Pool, started: float) -> None:
        # Each attempt may take at most a third of the lease: a renewal that answers later
        # is no use, the next one is due.
        async with asyncio.timeout(self.lease / 3):
            async with pool.acquire() as conn:
                epoch = await store.take_lease(conn, self.holder, self.lease)
                if epoch is None:
                    row = await store.read_lease(conn)
        if epoch is None:
            if self.epoch is not None:
                self.step_down(StepDown.LOST)
            if row is not None:
                self.leader, self.leader_epoch = str(row["holder"]), int(row["epoch"])
                self._renewed = self._monotonic() - max(0.0, float(row["age"] or 0.0))
            return
        self._renewed = started
        self.leader, self.leader_epoch = self.holder, epoch
        if self.epoch is not None and epoch != self.epoch:
            # The lease lapsed and came back to us: a new epoch, a new term. What was
            # decided under the old one is fenced off; begin again from the database.
            self.step_down(StepDown.EXPIRED)
        self._valid_until = started + self.lease - self.margin
        if self.epoch is None:
            self.epoch = epoch
            self.role = Role.LEADER
            self._leads.inc()
            self._taking_up = None  # run() starts taking up what the database holds
            log.info("cluster.leading", epoch=epoch, node=self.holder)
            self._show()
            self.changed.set()

    async def release(self, pool: asyncpg.Pool) -> None:
        """A clean stop: give the lease up, so a standby takes over at its next try."""
        epoch = self.epoch
        self.step_down(StepDown.STOPPED)
        if epoch is None:
            return
        try:
            async with asyncio.timeout(2), pool.acquire() as conn:
                await store.release_lease(conn, self.holder, epoch)
        except (*UNAVAILABLE, asyncpg.PostgresError) as e:
            log.warning("cluster.release_failed", error=str(e) or type(e).__name__)

    # -- shown ---------------------------------------------------------------------------

    def _show(self) -> None:
        for role in Role:
            self._role.set(1 if role is self.role else 0, role=role.value)
        self._epoch.set(self.epoch if self.epoch is not None else self.leader_epoch)

    def _collect(self) -> None:
        self._show()
        self._age.set(round(self._monotonic() - self._renewed, 3) if self._renewed else -1)
