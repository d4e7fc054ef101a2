"""Load shedding, the IO part: admit or refuse each forwarder connection.

Theory of operation
-------------------
A ``Gate`` wraps the connection handlers of the fast, durable and bulk
ports.  Each accepted connection asks ``ShedPolicy.decide`` (``shedding``)
with this ingester's ``LoadMeter`` and the other ingesters' loads from
their ``oklog.load`` Serf tags (``peer_loads``); an admitted connection is
counted until it ends.  ``Gate.run`` samples the meter every second,
re-decides (so the published ``refusing`` flag is current) and publishes
``oklog.load`` whenever it changed enough (``changed_enough``): at most
once a tick, usually far less.

How a refusal works, and why it loses nothing
---------------------------------------------
The line protocol has no acknowledgements and the forwarder writes first:
a forwarder that connects and at once writes a batch into a socket the
ingester then closes or resets loses that batch.  So a refused connection
is never reset with data in it.  Instead:

- **fast and durable ports (plain TCP)**: the ingester half-closes at once
  (sends FIN: "go away") and keeps reading, stamping and storing whatever
  the forwarder had already written, until the forwarder's own EOF (or
  ``grace`` seconds, then it is closed; at most ``MAX_DRAINING`` such
  connections at once, beyond which a refusal is a plain reset: a bound
  for floods, never reached by forwarders that close when told to).
  ``oklog forward`` watches every
  connection for EOF: it sees ours within a round trip, stops writing to
  it, closes it (its EOF ends our read) and fails over to the next
  ingester with the rest.  What it wrote before noticing was read and
  stored here -- the forwarder counts those lines "unconfirmed" (it cannot
  tell), but none is lost and none is sent twice.
- **TLS line ports**: the TCP connection is reset before the TLS handshake.
  No application data can precede a handshake, so nothing is lost; the
  forwarder sees a failed handshake and fails over.
- **bulk port**: the reply ``ERR refused: ...`` is sent at once and the
  upload read and discarded until the client's EOF (as for an upload too
  large); bulk is acknowledged, so the forwarder sends the segment again to
  the next ingester.

Alternatives rejected: closing the listening socket while refusing gives
``ECONNREFUSED`` for free, but the kernel resets every connection still
in the accept queue -- some of which may already have written a batch --
and no refusal can be counted; accept-and-reset needs every forwarder to
wait for the reset before its first write, a delay on every connection
that still loses data on a loaded host where the reset comes late.

Every refusal is counted in ``oklog_ingest_refused_connections{reason}``
and logged (``event=connection_refused``, at most one line per reason per
``log_interval`` seconds, with the number refused since the last line).
``warn_inactive`` says at start-up when ``-ingest.shed-factor`` cannot
act (no Serf: no other ingester's load is known).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Awaitable, Callable

import trio

from .. import metrics
from ..bulkwire import err_line
from ..cluster.membership import ROLE_TAG, Membership, SerfMembership
from ..listen import reset_on_close
from ..roles import serves_ingest
from .shedding import LOAD_TAG, REASONS, Load, LoadMeter, ShedPolicy, changed_enough, format_load, parse_load

log = logging.getLogger("oklog.ingest")

Handler = Callable[[Any], Awaitable[None]]

#: How long a refused connection may go on sending (what it sends is stored).
REFUSE_GRACE = 10.0
#: At most this many refused connections are read at once; beyond, a
#: refused connection is reset at once (on a line port what it sent is then
#: lost: only a client that ignores the close, or a flood, gets there; a
#: bulk upload is sent again).
MAX_DRAINING = 256
_RECEIVE = 256 * 1024


def peer_loads(membership: Membership) -> list[Load]:
    """The published loads of the *other* alive ingesters (those without a
    valid ``oklog.load`` tag are left out)."""
    if not isinstance(membership, SerfMembership):
        return []  # a cluster of one
    loads = []
    for m in membership.members():
        if m.status != "alive" or m.name == membership.name or not serves_ingest(m.tags.get(ROLE_TAG, "")):
            continue
        load = parse_load(m.tags.get(LOAD_TAG, ""))
        if load is not None:
            loads.append(load)
    return loads


class Gate:
    """Admits or refuses forwarder connections; see the module docstring."""

    def __init__(self, policy: ShedPolicy, meter: LoadMeter | None = None, *,
                 peers: Callable[[], list[Load]] = list, grace: float = REFUSE_GRACE,
                 log_interval: float = 5.0, max_draining: int = MAX_DRAINING) -> None:
        self.policy = policy
        self.meter = meter if meter is not None else LoadMeter()
        self.peers = peers
        self.grace = grace
        self.log_interval = log_interval
        self.max_draining = max_draining
        self.draining = 0  #: refused connections still being read
        self.refusing: str | None = None  #: the latest decision's reason to refuse
        self.published: Load | None = None
        self._unlogged = dict.fromkeys(REASONS, 0)
        self._last_log = dict.fromkeys(REASONS, -math.inf)

    # --- deciding --------------------------------------------------------------------

    def decide(self) -> str | None:
        """Would the next connection be refused now, and why."""
        if not self.policy.enabled:
            return None
        self.refusing = self.policy.decide(self.meter.load(), self.peers())
        return self.refusing

    def load(self) -> Load:
        return self.meter.load(refusing=self.refusing is not None)

    def _refused(self, reason: str, mode: str) -> None:
        metrics.ingest_refused.labels(reason).inc()
        self._unlogged[reason] += 1
        self._log_refusals(mode)

    def _log_refusals(self, mode: str = "") -> None:
        """One line per reason with refusals not yet logged, at most every
        ``log_interval`` seconds (``run`` calls this too, so a last burst
        is logged even if no refusal follows it)."""
        now = trio.current_time()
        for reason, count in self._unlogged.items():
            if not count or now - self._last_log[reason] < self.log_interval:
                continue
            load = self.meter.load()
            log.warning("event=connection_refused reason=%s mode=%s count=%d connections=%d "
                        "max_connections=%d bytes_per_second=%d", reason, mode or "any", count,
                        load.connections, self.policy.max_connections, load.bytes_per_second)
            self._unlogged[reason] = 0
            self._last_log[reason] = now

    # --- wrapping the port handlers -----------------------------------------------------

    def lines(self, handler: Handler, *, durable: bool, tls: bool) -> Handler:
        """Gate a fast/durable port's handler (``LineIngester.handler``)."""
        mode = "durable" if durable else "fast"

        async def gated(stream: Any) -> None:
            reason = self.decide()
            if reason is None:
                await self._serve(handler, stream)
                return
            self._refused(reason, mode)
            if tls:  # before the handshake: the forwarder cannot have sent any data
                reset_on_close(stream.transport_stream)
                await trio.aclose_forcefully(stream)
                return
            if self.draining >= self.max_draining:  # a flood: bounded, even at a cost
                reset_on_close(stream)
                await trio.aclose_forcefully(stream)
                return
            self.draining += 1
            try:
                try:
                    await stream.send_eof()  # FIN: "go away"; what was sent is still read
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                with trio.move_on_after(self.grace):
                    await handler(stream)  # reads, stores and closes at the forwarder's EOF
                await trio.aclose_forcefully(stream)
            finally:
                self.draining -= 1

        return gated

    def bulk(self, handler: Handler) -> Handler:
        """Gate the bulk port's handler (``BulkIngester.handle``)."""

        async def gated(stream: Any) -> None:
            reason = self.decide()
            if reason is None:
                await self._serve(handler, stream)
                return
            self._refused(reason, "bulk")
            if self.draining >= self.max_draining:  # a flood: a reset (an upload is sent again)
                reset_on_close(stream)
                await trio.aclose_forcefully(stream)
                return
            self.draining += 1
            try:
                with trio.move_on_after(self.grace):
                    await stream.send_all(err_line(f"refused: {_why(reason)}; send it to another ingester"))
                    await stream.send_eof()
                    while await stream.receive_some(_RECEIVE):
                        pass  # discard: the client sends it again elsewhere
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self.draining -= 1
                await trio.aclose_forcefully(stream)

        return gated

    async def _serve(self, handler: Handler, stream: Any) -> None:
        self.meter.opened()
        try:
            await handler(stream)
        finally:
            self.meter.closed()

    # --- publishing ------------------------------------------------------------------------

    async def run(self, publish: Callable[[dict[str, str]], Awaitable[None]], *, tick: float = 1.0,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample, re-decide and publish ``oklog.load`` when it changed enough, until cancelled."""
        task_status.started()
        announced: str | None = None  # the state last logged (decide() also runs per connection)
        while True:
            self.meter.sample(trio.current_time())
            self.decide()
            if self.refusing != announced:
                announced = self.refusing
                if self.refusing is None:
                    log.info("event=shedding_stopped")
                else:
                    load = self.meter.load()
                    log.info("event=shedding_started reason=%s connections=%d bytes_per_second=%d",
                             self.refusing, load.connections, load.bytes_per_second)
            load = self.load()
            self._log_refusals()
            if changed_enough(self.published, load):
                await publish({LOAD_TAG: format_load(load)})
                self.published = load
            await trio.sleep(tick)


def _why(reason: str) -> str:
    if reason == "max_connections":
        return "too many connections (-ingest.max-connections)"
    return "this ingester is far busier than the others (-ingest.shed-factor)"


def warn_inactive(policy: ShedPolicy, membership: Membership) -> None:
    """Log once if the cluster rule is on but can never fire (no Serf)."""
    if policy.factor and not isinstance(membership, SerfMembership):
        log.warning("event=shed_factor_inactive reason=no_serf (-ingest.shed-factor compares "
                    "this ingester with the others' published loads; without Serf it never refuses)")
