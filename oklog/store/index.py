"""The in-memory interval index over store segments, by ``[lo, hi]`` name.

Theory of operation
-------------------

Entries are ``(SegmentName, value)``; the value is whatever the caller needs
per segment (a path, a handle).  Two entries may have the same name -- two
replicas of the same range, arriving twice -- so each entry also gets a
private sequence number, and the sort key is ``(lo, hi, seq)``: equal names
keep their insertion order and nothing is ever lost or overwritten.

Every entry lives in two places:

- ``_all``: one ``SortedList`` of every entry in ``(lo, hi, seq)`` order, for
  iteration, ``remove`` look-ups and :meth:`overlapping_groups`;
- exactly one *layer*: a ``SortedList`` whose intervals do not overlap each
  other.  Within a layer, ordering by ``lo`` is also ordering by ``hi``, so
  the entries of a layer overlapping ``[A, B]`` are one contiguous run found
  by a single bisection: the first entry with ``lo >= A`` (and possibly the
  one just before it, the only one that can start before ``A`` and still
  reach it), then forward while ``lo <= B``.

``add`` puts an entry into the first layer where it fits (first-fit), or opens
a new layer.  The number of layers ``L`` therefore tracks how deeply segments
overlap, not how many there are: a compacted store (no overlaps) has one
layer; fresh, not yet compacted replicas add a few.

Complexity, with ``n`` entries, ``L`` layers and ``k`` results:

- ``query``: ``O(L log n + k log k)`` -- no scan of the non-overlapping
  segments; layers whose span misses ``[A, B]`` are skipped in ``O(1)``;
- ``add``: ``O(L log n)``;  ``remove``: ``O(log n + d)`` (``d`` = entries with
  the same name), ``+ O(L)`` when a layer becomes empty;
- ``overlapping_groups``, ``__iter__``: ``O(n)``;
- building from ``n`` entries (constructor, ``update`` of an empty index --
  start-up from the file names): ``O(n log n + n L)``, one sort.

First-fit colouring of intervals uses at most a small constant times the
maximum overlap depth, so ``L`` stays small unless the store is left
uncompacted under many long overlapping segments; even then ``query`` only
degrades to ``O(n log n)``, never worse.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from sortedcontainers import SortedList

from oklog.segment.name import SegmentName

__all__ = ["Entry", "IntervalIndex", "SegmentName", "group_overlapping"]

V = TypeVar("V")

Entry = tuple[SegmentName, V]

# Internal item: (lo, hi, seq, name, value).  ``seq`` is unique, so tuple
# comparison never reaches ``name`` or ``value`` (values need not be orderable).
_Item = tuple[bytes, bytes, int, SegmentName, V]


def group_overlapping(
    entries: Iterable[Entry[V]],
    lo: bytes | None = None,
    hi: bytes | None = None,
) -> list[list[Entry[V]]]:
    """Split entries sorted by name into runs of transitively overlapping ones.

    Two entries are in the same group when a chain of pairwise overlapping
    entries (sharing at least one ULID, ends inclusive) connects them.  Groups
    come in ``lo`` order; a one-entry group needs no merge.  With ``lo``/``hi``
    the intervals are first clipped to ``[lo, hi]`` (the query range), so
    segments that only overlap outside the range are not grouped.
    """
    groups: list[list[Entry[V]]] = []
    cur: list[Entry[V]] = []
    reach = b""
    for entry in entries:
        name = entry[0]
        start = name.lo if lo is None or name.lo > lo else lo
        end = name.hi if hi is None or name.hi < hi else hi
        if cur and start <= reach:
            cur.append(entry)
            if end > reach:
                reach = end
        else:
            cur = [entry]
            groups.append(cur)
            reach = end
    return groups


class IntervalIndex(Generic[V]):
    """Segments by ``[lo, hi]`` range; finds those overlapping a query range.

    See the module docstring for the design and complexity.  Not thread-safe;
    ``__iter__`` iterates over a snapshot, so mutating while iterating is safe.
    """

    def __init__(self, entries: Iterable[Entry[V]] = ()) -> None:
        self._all: SortedList = SortedList()
        self._layers: list[SortedList] = []
        self._layer_of: dict[int, SortedList] = {}
        self._seq = itertools.count()
        self.update(entries)

    # --- mutation ------------------------------------------------------------

    def add(self, name: SegmentName, value: V) -> None:
        """Add one entry.  Equal names are kept side by side, never merged."""
        lo, hi = name.lo, name.hi
        item = (lo, hi, next(self._seq), name, value)
        self._all.add(item)
        for layer in self._layers:
            if self._fits(layer, lo, hi):
                break
        else:
            layer = SortedList()
            self._layers.append(layer)
        layer.add(item)
        self._layer_of[item[2]] = layer

    def update(self, entries: Iterable[Entry[V]]) -> None:
        """Add many entries; into an empty index (start-up, from the file
        names) in one ``O(n log n + n L)`` pass instead of one ``add`` each."""
        if self._all:
            for name, value in entries:
                self.add(name, value)
            return
        items = [(n.lo, n.hi, next(self._seq), n, v) for n, v in entries]
        items.sort()  # seq is unique: never compares names or values
        layers: list[list[_Item[V]]] = []
        ends: list[bytes] = []  # hi of the last item of each layer
        for item in items:  # by lo: an item fits after a layer's last one
            for i, end in enumerate(ends):
                if end < item[0]:
                    break
            else:
                i = len(layers)
                layers.append([])
                ends.append(b"")
            layers[i].append(item)
            ends[i] = item[1]
        self._all.update(items)
        for members in layers:
            layer = SortedList(members)
            self._layers.append(layer)
            for item in members:
                self._layer_of[item[2]] = layer

    def remove(self, name: SegmentName, value: V) -> None:
        """Remove one entry with this name and an equal value.

        If several match (the same segment added twice), the oldest goes.
        Raises ``KeyError`` when none matches.
        """
        lo, hi = name.lo, name.hi
        for item in self._all.irange((lo, hi), (lo, hi, float("inf"))):
            if item[4] == value:
                break
        else:
            raise KeyError((name, value))
        self._all.remove(item)
        layer = self._layer_of.pop(item[2])
        layer.remove(item)
        if not layer:  # by identity: SortedList's == compares contents
            self._layers = [other for other in self._layers if other is not layer]

    def discard(self, name: SegmentName, value: V) -> bool:
        """Like :meth:`remove` but returns whether something was removed."""
        try:
            self.remove(name, value)
        except KeyError:
            return False
        return True

    def clear(self) -> None:
        self._all.clear()
        self._layers.clear()
        self._layer_of.clear()

    @staticmethod
    def _fits(layer: SortedList, lo: bytes, hi: bytes) -> bool:
        """Whether ``[lo, hi]`` overlaps nothing in ``layer``."""
        i = layer.bisect_left((lo,))
        if i < len(layer) and layer[i][0] <= hi:
            return False
        return not (i > 0 and layer[i - 1][1] >= lo)

    # --- queries ---------------------------------------------------------------

    def query(self, lo: bytes, hi: bytes) -> list[Entry[V]]:
        """Entries whose range overlaps ``[lo, hi]`` (inclusive), by name.

        ``lo``/``hi`` are compared as bytes, so any prefix works as a bound
        (``b""`` is below every ULID, ``b"\\xff"`` above).  Empty if lo > hi.
        """
        found: list[_Item[V]] = []
        if lo > hi:
            return []
        for layer in self._layers:
            # A layer is sorted by lo and by hi at once: its span is
            # [first.lo, last.hi].
            if layer[0][0] > hi or layer[-1][1] < lo:
                continue
            i = layer.bisect_left((lo,))
            if i > 0 and layer[i - 1][1] >= lo:
                i -= 1
            for item in layer.islice(i):
                if item[0] > hi:
                    break
                found.append(item)
        if len(self._layers) > 1:
            found.sort()
        return [(item[3], item[4]) for item in found]

    def overlapping_groups(
        self, lo: bytes | None = None, hi: bytes | None = None
    ) -> list[list[Entry[V]]]:
        """Connected components of overlapping entries, in ``lo`` order.

        Without bounds: over the whole index (what compaction needs).  With
        ``lo`` and ``hi``: over :meth:`query` ``(lo, hi)``, clipped to that
        range (what a query needs to know where a k-way merge is required).
        """
        if lo is None and hi is None:
            return group_overlapping((it[3], it[4]) for it in self._all)
        qlo = b"" if lo is None else lo
        qhi = b"\xff" if hi is None else hi
        return group_overlapping(self.query(qlo, qhi), qlo, qhi)

    def __len__(self) -> int:
        return len(self._all)

    def __bool__(self) -> bool:
        return bool(self._all)

    def __iter__(self) -> Iterator[Entry[V]]:
        """All entries by ``(lo, hi)``, then insertion order (a snapshot)."""
        return iter([(item[3], item[4]) for item in self._all])

    @property
    def depth(self) -> int:
        """Number of layers: 0 empty, 1 when nothing overlaps."""
        return len(self._layers)

    def __repr__(self) -> str:
        return f"<IntervalIndex {len(self)} segments, {self.depth} layers>"

    # --- self-check -------------------------------------------------------------

    def _check(self) -> None:
        """Assert every internal invariant (tests call this after each step)."""
        all_items = list(self._all)
        assert all_items == sorted(all_items, key=lambda it: it[:3])
        seqs = [it[2] for it in all_items]
        assert len(set(seqs)) == len(seqs), "duplicate seq"
        for lo, hi, _seq, name, _value in all_items:
            assert isinstance(name, SegmentName)
            assert (name.lo, name.hi) == (lo, hi)
            assert lo <= hi
        assert set(self._layer_of) == set(seqs), "layer map out of sync"
        total = 0
        layer_ids = {id(layer) for layer in self._layers}
        assert len(layer_ids) == len(self._layers), "layer listed twice"
        for layer in self._layers:
            assert len(layer) > 0, "empty layer kept"
            layer._check()
            items = list(layer)
            for prev, cur in zip(items, items[1:]):
                assert prev[1] < cur[0], f"overlap inside a layer: {prev} {cur}"
            for item in items:
                assert self._layer_of[item[2]] is layer
                assert item in self._all
            total += len(items)
        assert total == len(all_items), "layers and _all disagree"
        for layer in self._layer_of.values():
            assert id(layer) in layer_ids
        self._all._check()
