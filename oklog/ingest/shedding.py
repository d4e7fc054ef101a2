"""Load shedding, the IO-free part: measure load, share it, decide.

Theory of operation
-------------------
OK Log designed (and never built) this: ingesters broadcast their load, and
one whose load is far above the cluster mean refuses new forwarder
connections, "as long as no more than a handful of nodes are refusing", so
forwarders spread out over the tier by failing over.  Here:

- ``LoadMeter`` counts this ingester's open forwarder connections (fast,
  durable and bulk ports together) and the bytes and records it stamps; its
  rate is the bytes (records) per second over the last ``window`` seconds of
  samples, the clock passed in by the caller.
- ``Load`` is what an ingester publishes, as one small Serf tag
  ``oklog.load`` = ``conns=12,bps=34567,rps=890,refusing=0`` (``format_load``
  / ``parse_load``; a malformed tag is ignored, never an error).
- ``ShedPolicy.decide(local, peers)`` says whether the next connection is
  refused, and why:

  1. ``max_connections`` (``-ingest.max-connections``, 0 = off): refuse while
     this ingester holds that many connections.  A hard, local cap.
  2. The cluster rule (``-ingest.shed-factor F``, 0 = off): refuse while this
     ingester's *score* -- its share of the tier's connections plus its
     share of the tier's bytes/s, over the ingesters that publish a load --
     exceeds F times the mean score of the other ingesters, **and** at least
     ``MIN_CONNECTIONS`` connections or ``MIN_RATE`` bytes/s are at stake
     here (a near-idle cluster never sheds), **and** fewer ingesters are
     already refusing than the "handful": ``max(1, floor(n *
     REFUSING_FRACTION))`` of the ``n`` known ingesters, never more than
     ``n - 1``.  With no peer load known (a single node, Serf off, peers
     that publish nothing) the rule never refuses: a node does not shed on
     its own say-so.  One score per node, and F above 1: no node can be
     above F times the others' mean on every node at once (summing the
     inequalities gives S > F * S), so some ingester always accepts.  (Two
     separate criteria, connections *or* bytes/s, would let one node refuse
     for its connections and another for its bytes at the same time.)

Peers' loads arrive by gossip, a second or more late; the rule only steers
*new* connections, so late data costs a little balance, never a record.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

LOAD_TAG = "oklog.load"

#: The cluster rule never refuses below this many connections ...
MIN_CONNECTIONS = 4
#: ... or, for the rate criterion, below this many bytes per second.
MIN_RATE = 1 << 20
#: At most this fraction of the known ingesters may refuse (at least one, never all).
REFUSING_FRACTION = 0.25

REASONS = ("max_connections", "load")


@dataclass(frozen=True)
class Load:
    """One ingester's load, as published in its ``oklog.load`` tag."""

    connections: int = 0
    bytes_per_second: float = 0.0
    records_per_second: float = 0.0
    refusing: bool = False


def format_load(load: Load) -> str:
    """The ``oklog.load`` tag value (small: Serf tags share ~512 bytes)."""
    return (f"conns={load.connections},bps={int(load.bytes_per_second)},"
            f"rps={int(load.records_per_second)},refusing={int(load.refusing)}")


def parse_load(text: str) -> Load | None:
    """A peer's tag → ``Load``; None for anything malformed (a peer's tag
    is not ours to trust: it only steers, so it is ignored)."""
    fields: dict[str, int] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key in fields or not value.isascii() or not value.isdigit() or len(value) > 18:
            return None
        fields[key] = int(value)
    if set(fields) != {"conns", "bps", "rps", "refusing"} or fields["refusing"] > 1:
        return None
    return Load(fields["conns"], float(fields["bps"]), float(fields["rps"]), bool(fields["refusing"]))


def _scores(loads: Sequence[Load]) -> list[float]:
    """Each ingester's share of the tier's connections plus its share of
    the tier's bytes/s: one number per node, so "far above the others" can
    hold for some nodes but never for all of them at once."""
    conns = sum(x.connections for x in loads)
    rate = sum(x.bytes_per_second for x in loads)
    return [(x.connections / conns if conns else 0.0) + (x.bytes_per_second / rate if rate else 0.0)
            for x in loads]


def changed_enough(old: Load | None, new: Load) -> bool:
    """Is ``new`` worth a gossip broadcast after ``old``?  Yes for the first
    one, a change of the refusing flag, of the connection count by at least
    max(1, 10 %), or of the byte rate by 20 % (and 64 KiB/s) or more."""
    if old is None or old.refusing != new.refusing:
        return True
    if abs(new.connections - old.connections) >= max(1, old.connections // 10):
        return True
    delta = abs(new.bytes_per_second - old.bytes_per_second)
    return delta >= 64 * 1024 and delta >= 0.2 * old.bytes_per_second


class LoadMeter:
    """Connections held and bytes/records per second over a sliding window."""

    def __init__(self, window: float = 5.0) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.connections = 0
        self.bytes = 0  #: bytes stamped since start
        self.records = 0  #: records stamped since start
        self._samples: deque[tuple[float, int, int]] = deque()

    def opened(self) -> None:
        self.connections += 1

    def closed(self) -> None:
        if self.connections <= 0:
            raise ValueError("closed() without opened()")
        self.connections -= 1

    def add(self, nbytes: int, nrecords: int) -> None:
        self.bytes += nbytes
        self.records += nrecords

    def sample(self, now: float) -> None:
        """Remember the counters at ``now`` (call about once a second)."""
        if self._samples and now < self._samples[-1][0]:
            raise ValueError("time went backwards")
        self._samples.append((now, self.bytes, self.records))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(bytes/s, records/s) between the oldest and newest sample kept."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        t0, b0, r0 = self._samples[0]
        t1, b1, r1 = self._samples[-1]
        if t1 <= t0:
            return 0.0, 0.0
        return (b1 - b0) / (t1 - t0), (r1 - r0) / (t1 - t0)

    def load(self, refusing: bool = False) -> Load:
        bps, rps = self.rates()
        return Load(self.connections, bps, rps, refusing)


@dataclass(frozen=True)
class ShedPolicy:
    """When to refuse a new forwarder connection (see the module docstring)."""

    max_connections: int = 0  #: 0: no cap
    factor: float = 0.0  #: 0: no cluster rule; else > 1
    min_connections: int = MIN_CONNECTIONS
    min_rate: float = MIN_RATE
    refusing_fraction: float = REFUSING_FRACTION

    def __post_init__(self) -> None:
        if self.max_connections < 0:
            raise ValueError("max_connections must be 0 (off) or positive")
        if self.factor != 0 and not (self.factor > 1 and math.isfinite(self.factor)):
            raise ValueError("factor must be 0 (off) or a number above 1")
        if not 0 <= self.refusing_fraction < 1:
            raise ValueError("refusing_fraction must be in [0, 1)")

    @property
    def enabled(self) -> bool:
        return self.max_connections > 0 or self.factor > 0

    def allowed_refusing(self, ingesters: int) -> int:
        """How many of ``ingesters`` known ingesters may refuse at once."""
        if ingesters < 2:
            return 0
        return min(ingesters - 1, max(1, math.floor(ingesters * self.refusing_fraction)))

    def decide(self, local: Load, peers: Sequence[Load]) -> str | None:
        """None to accept the next connection, else the reason to refuse it
        (``max_connections`` or ``load``).  ``local.refusing`` is ignored;
        ``peers`` are the other ingesters' published loads."""
        if self.max_connections and local.connections >= self.max_connections:
            return "max_connections"
        if not self.factor or not peers:
            return None
        n = len(peers) + 1
        if sum(p.refusing for p in peers) >= self.allowed_refusing(n):
            return None  # enough of the tier is refusing already
        if local.connections < self.min_connections and local.bytes_per_second < self.min_rate:
            return None  # too little at stake
        scores = _scores([local, *peers])
        # against the mean of the *others*: against a mean that includes
        # itself, one node of two could never be above twice it
        if scores[0] > self.factor * sum(scores[1:]) / len(peers):
            return "load"
        return None
