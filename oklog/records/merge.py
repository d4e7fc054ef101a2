"""Merging sorted record streams into one, de-duplicated by ULID.

Records are lines ``ULID SP TOPIC SP PAYLOAD LF``; the first 26 bytes are the
ULID, the sort key, and the identity of a record.  Every function here works
on *blocks*: ``bytes`` holding one or more whole lines, each ending in LF.
Per-record Python code is avoided: a block is split once, compared with
``map``/``operator`` and joined once, so the per-line work runs in C.

Theory of operation of :func:`merge_records`
---------------------------------------------

Each source is a sequence of sorted blocks; a ``_Source`` holds the current
block and an offset into it.  Finding a line boundary by ULID is a binary
search over the block (``rfind``/``index`` of LF around a midpoint), so the
merge can move whole slices of a block without splitting it.  It alternates
between two moves:

*Runs.*  Take the source with the smallest head (the earliest one on ties)
and the smallest head among the others; every line of the first source
below that second head belongs to it alone and goes out as one slice of its
block -- no split, no join.  Segments that merely touch, a dense segment
with a sparse one inside (a read-repair segment), streams that alternate in
long bursts: all of these are almost only runs.  When runs come out short
twice in a row the sources interleave finely, and the merge switches to
batches for a while (exponential back-off before it looks for runs again).

*Batches.*  The *horizon* ``M`` is the smallest, over the live sources, of
the ULID found ``WINDOW`` bytes into the source's block (or its last line).
Every record ``<= M`` of every source is already in hand -- later blocks only
hold larger ULIDs, or repeats of ``M`` by the source whose block ends at
``M``, which are intra-source duplicates.  Each source's block is cut at
``M`` and the chunks are merged into one output block, by the cheapest
method that is correct:

1. one non-empty chunk: emitted as is;
2. all chunks byte-identical (replicas, the usual case when the same data
   comes from several store nodes): emitted once -- one ``memcmp``;
3. chunks whose ranges do not overlap: concatenated in ULID order;
4. otherwise (:meth:`_Merger.interleaved`): the chunks are split into lines,
   sorted by a plain C sort (whole-line compare = ULID order; timsort finds
   the chunks as runs and gallops), and copies of a ULID -- adjacent now --
   dropped with ``map``/``compress``; if two copies differ in their bytes,
   a stable key sort redoes the batch so that the earliest source wins.

Batches of about ``WINDOW`` bytes per source keep the working set of the
line-level passes in the CPU cache.  All copies of a ULID are in the same
batch (or a run has the only one), which makes per-batch copy counting for
read repair exact.  Output pieces are coalesced into blocks of at least
``WINDOW`` bytes; a single source is passed through block by block,
unchanged (apart from duplicate removal when it is not ``trusted_unique``).

Records must be valid (at least a 26-byte ULID per line) and each source
sorted by ULID; neither is re-checked here (the replicate handler and the
segment reader validate).  Unsorted input gives unsorted output, never a
crash.  A source block that does not end in LF raises ``CorruptSegment``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain, compress, islice
from operator import and_, eq, lt, ne, not_, or_

from oklog.errors import CorruptSegment
from oklog.lines import Pieces
from oklog.records.search import bisect, last_ulid, ulid_of
from oklog.ulid import ULID_LEN

#: Source blocks smaller than this are joined before merging (several sources).
MIN_BLOCK = 64 * 1024
#: A merge batch takes about this many bytes per source; output blocks of a
#: multi-source merge are coalesced to at least this size.  Batches of a few
#: hundred lines keep the split/sort/join working set in the CPU cache.
WINDOW = 128 * 1024
#: A run of one source below all other heads is sliced out whole (no split)
#: when it is at least this long, or when short runs alternate with long ones.
RUN_MIN = 4 * 1024
#: Large blocks are split into pieces of about this size for line-level work.
PIECE = 256 * 1024

OnShort = Callable[[bytes], None]

_LF = b"\n"


# --- single blocks ----------------------------------------------------------------


def _lines(block: bytes) -> list[bytes]:
    """The lines of an LF-terminated block, without their LFs."""
    lines = block.split(_LF)
    lines.pop()  # the empty string after the final LF
    return lines


def _join(lines: list[bytes]) -> bytes:
    """Inverse of :func:`_lines` (appends and removes a sentinel in place)."""
    lines.append(b"")
    out = _LF.join(lines)
    lines.pop()
    return out


def _pieces(block: bytes, size: int | None = None) -> Iterator[bytes]:
    """Line-aligned slices of ``block`` of about ``size`` bytes (the block
    itself when small): line-level work on them stays in the CPU cache."""
    size = size or PIECE
    n = len(block)
    if n <= size:
        yield block
        return
    pos = 0
    while pos < n:
        end = block.find(_LF, pos + size) + 1 or n
        yield block[pos:end]
        pos = end


def is_strictly_sorted(block: bytes) -> bool:
    """Whether the ULIDs of ``block``'s lines strictly increase.

    Strictly: sorted *and* no ULID twice -- exactly what a store segment must
    be.  A final line without LF counts as a line.  Runs in C (one split, one
    ``map`` of slices, one ``map`` of comparisons).
    """
    prev: list[bytes] = []  # the last ULID of the previous piece
    for piece in _pieces(block):
        lines = piece.split(_LF)
        if piece.endswith(_LF):
            lines.pop()
        keys = prev + list(map(ulid_of, lines))
        if not all(map(lt, keys, islice(keys, 1, None))):
            return False
        prev = keys[-1:]
    return True


def sort_records(block: bytes) -> bytes:
    """Sort a block of records by ULID, keeping the first of equal ULIDs.

    Returns ``block`` itself when it is already strictly sorted.  ``b""``
    gives ``b""``; a non-empty block must end with LF, else
    :class:`~oklog.errors.CorruptSegment`.  Payloads are never looked at: two
    lines with the same ULID are the same record, and the earlier one wins
    (the sort is stable).
    """
    if not block:
        return b""
    if not block.endswith(_LF):
        raise CorruptSegment("records block does not end with LF")
    if is_strictly_sorted(block):
        return block
    return _Merger(True, 0, None).interleaved([block])


def _dedup_lines(lines: list[bytes], prev: bytes | None) -> tuple[list[bytes], bytes | None]:
    """Drop lines whose ULID equals the previous line's (``prev`` before the
    first).  Returns the kept lines (``lines`` itself if none dropped) and the
    last ULID seen.  ``lines`` must not be empty."""
    keys = list(map(ulid_of, lines))
    flags = list(map(ne, keys, chain((prev,), keys)))
    if not all(flags):
        lines = list(compress(lines, flags))
    return lines, keys[-1]


# --- merging ---------------------------------------------------------------------


class _Source:
    """One input of a merge: its iterator and the unconsumed current block."""

    __slots__ = ("it", "block", "pos", "end", "last")

    def __init__(self, source: Iterable[bytes]) -> None:
        self.it = iter(source)
        self.block = b""
        self.pos = 0
        self.end = b""  # ULID of the last line of ``block``
        self.last: bytes | None = None  # last ULID taken (intra-source dedup)

    def pull(self) -> bool:
        """Load the next block(s), joined up to MIN_BLOCK; False at the end."""
        parts: list[bytes] = []
        size = 0
        for block in self.it:
            if not block:
                continue
            if not block.endswith(_LF):
                raise CorruptSegment("merge source block does not end with LF")
            parts.append(block)
            size += len(block)
            if size >= MIN_BLOCK:
                break
        if not parts:
            self.block = b""
            return False
        self.block = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos = 0
        self.end = last_ulid(self.block)
        return True

    @property
    def head(self) -> bytes:
        """The ULID of the first unconsumed line."""
        return self.block[self.pos : self.pos + ULID_LEN]

    def window_key(self) -> bytes:
        """The ULID of the line containing offset ``pos + WINDOW`` (or the
        last line): bounds how much of this source one batch takes."""
        block, at = self.block, self.pos + WINDOW
        if at >= len(block):
            return self.end
        start = block.rfind(_LF, self.pos, at) + 1 or self.pos
        return block[start : start + ULID_LEN]

    def cut(self, bound: bytes, *, inclusive: bool) -> int:
        """Offset of the first line at or after ``pos`` whose ULID is above
        ``bound`` (``inclusive``: lines equal to it are taken too)."""
        block, lo = self.block, self.pos
        if self.end < bound or (inclusive and self.end == bound):
            return len(block)
        head = block[lo : lo + ULID_LEN]
        if head > bound or (not inclusive and head == bound):
            return lo
        return bisect(block, bound, lo, after=inclusive)

    def take(self, cut: int) -> bytes:
        """Remove and return the lines from ``pos`` up to offset ``cut``."""
        pos, block = self.pos, self.block
        if cut == pos:
            return b""
        if cut == len(block):
            chunk = block if pos == 0 else block[pos:]
            self.pull()
        else:
            chunk = block[pos:cut]
            self.pos = cut
        return chunk

    def dedup(self, chunk: bytes) -> bytes:
        """``chunk`` without intra-source repeats of a ULID."""
        lines = _lines(chunk)
        kept, self.last = _dedup_lines(lines, self.last)
        return chunk if kept is lines else _join(kept)


class _Output:
    """Coalesces output pieces into blocks of about WINDOW bytes."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = Pieces()

    def add(self, block: bytes) -> list[bytes]:
        """Queue ``block``; return the blocks to yield now (maybe none)."""
        if not block:
            return []
        if len(block) >= WINDOW:  # big enough on its own: never copied
            return [self.flush(), block] if self.pending else [block]
        self.pending.add(block)
        return [self.flush()] if self.pending.size >= WINDOW else []

    def flush(self) -> bytes:
        return self.pending.take()


def merge_records(
    sources: Iterable[Iterable[bytes]],
    *,
    trusted_unique: bool = False,
    copies_needed: int = 0,
    on_short: OnShort | None = None,
) -> Iterator[bytes]:
    """Merge sorted record sources into sorted, de-duplicated blocks.

    ``sources``: each an iterable of blocks (``bytes`` of whole LF-ended lines,
    sorted by ULID within and across the source's blocks).  Yields non-empty
    blocks of whole lines, globally sorted by ULID, each ULID once: of
    several records with the same ULID the first wins -- earliest source in
    ``sources``, then earliest within that source.

    ``trusted_unique``: promise that no source repeats a ULID within itself
    (true of store segments and of this function's own output).  Skips the
    intra-source duplicate checks; a single trusted source is then passed
    through without touching its lines.  It does *not* assume that equal
    ULIDs in different sources carry equal bytes.

    ``copies_needed`` / ``on_short`` (read repair): when both are given, every
    output record present in fewer than ``copies_needed`` distinct sources is
    passed to ``on_short``, in output order, as blocks of whole lines (a
    block at a time, never a call per record).
    With ``copies_needed == 0`` no counting is done at all.

    The merge is lazy: it pulls source blocks as output is consumed.  With
    several sources, small output pieces are coalesced into blocks of about
    WINDOW bytes, so a consumer sees few, large blocks.
    """
    srcs = [_Source(s) for s in sources]
    m = _Merger(trusted_unique, copies_needed if on_short is not None else 0, on_short)
    if len(srcs) == 1:
        yield from m.single(srcs[0])
        return
    live = [s for s in srcs if s.pull()]
    out = _Output()
    short_runs = 0  # consecutive short runs taken
    backoff = 1  # batches to do without run checks after too many short runs
    skip = 0
    while len(live) > 1:
        if skip:
            skip -= 1
        else:
            first, cut = _find_run(live)
            if cut - first.pos >= RUN_MIN:
                short_runs, backoff = 0, 1
            elif cut > first.pos and short_runs < 2:
                # Short runs are taken while they alternate with long ones
                # (a sparse source inside a dense one).  Two in a row: the
                # sources interleave finely; batch, and look again later.
                short_runs += 1
            else:
                if cut > first.pos:
                    skip, backoff = backoff, min(2 * backoff, 64)
                cut = -1
            if cut >= 0:
                run = first.take(cut)
                if not first.block:
                    live.remove(first)
                yield from out.add(m.alone(first, run))
                continue
        short_runs = 0
        # Batch: everything up to the horizon, at most ~WINDOW per source.
        horizon = min([s.window_key() for s in live])
        chunks: list[bytes] = []
        owners: list[_Source] = []
        for s in live:
            chunk = s.take(s.cut(horizon, inclusive=True))
            if chunk:
                chunks.append(chunk)
                owners.append(s)
        if not chunks:
            # Only an unsorted source can put the horizon below every head:
            # take one line of the smallest head, so the merge always moves.
            first = min(live, key=lambda s: s.head)
            chunks.append(first.take(first.block.index(_LF, first.pos) + 1))
            owners.append(first)
        live = [s for s in live if s.block]
        yield from out.add(m.batch(chunks, owners))
    if live:
        s = live[0]
        yield from out.add(m.alone(s, s.block[s.pos :] if s.pos else s.block))
    block = out.flush()
    if block:
        yield block
    if live:
        yield from m.single(live[0])


def _find_run(live: list[_Source]) -> tuple[_Source, int]:
    """The source with the smallest head (the earliest on ties) and the
    offset up to which its lines are below every other source's head (its
    ``pos`` when another head is equal)."""
    first = live[0]
    h1 = first.head
    h2: bytes | None = None
    for s in islice(live, 1, None):
        h = s.head
        if h < h1:
            first, h1, h2 = s, h, h1
        elif h2 is None or h < h2:
            h2 = h
    assert h2 is not None
    if h1 == h2:
        return first, first.pos
    return first, first.cut(h2, inclusive=False)


class _Merger:
    """Merges one batch of chunks at a time (see the module docstring)."""

    __slots__ = ("trusted", "need", "on_short", "dups_seen")

    def __init__(self, trusted: bool, need: int, on_short: OnShort | None) -> None:
        self.trusted = trusted
        self.need = need  # 0 or 1: no counting
        self.on_short = on_short
        self.dups_seen = False  # did the last interleaved batch hold copies?

    def report(self, block: bytes, copies: int = 1) -> None:
        """Report every record of ``block`` if ``copies`` is too few."""
        if copies < self.need and block:
            assert self.on_short is not None
            self.on_short(block)

    def alone(self, s: _Source, chunk: bytes) -> bytes:
        """Lines of one source that no other source has."""
        if not self.trusted:
            chunk = s.dedup(chunk)
        self.report(chunk)
        return chunk

    def single(self, s: _Source) -> Iterator[bytes]:
        """The rest of a source that is the only one left."""
        for block in s.it:
            if not block:
                continue
            if not block.endswith(_LF):
                raise CorruptSegment("merge source block does not end with LF")
            if self.trusted and self.need <= 1:
                yield block
                continue
            for piece in _pieces(block):
                piece = self.alone(s, piece)
                if piece:
                    yield piece

    def batch(self, chunks: list[bytes], owners: list[_Source]) -> bytes:
        """Merge the non-empty chunks of one batch (in source order)."""
        if len(chunks) <= 1:
            return self.alone(owners[0], chunks[0]) if chunks else b""
        first = chunks[0]
        # 2. replicas: every chunk holds exactly the same records.
        if all([c == first for c in chunks]):
            if not self.trusted:
                first = owners[0].dedup(first)
                for s in owners:
                    s.last = owners[0].last
            self.report(first, len(chunks))
            return first
        untrusted = not self.trusted
        if untrusted and self.need > 1:  # counting needs each source once
            chunks = [s.dedup(c) for s, c in zip(owners, chunks)]
            chunks = [c for c in chunks if c]
            untrusted = False
        # 3. non-overlapping chunks: concatenate in ULID order.
        ordered = sorted(chunks, key=ulid_of)
        ends = list(map(last_ulid, ordered))
        if all(map(lt, ends, map(ulid_of, islice(ordered, 1, None)))):
            if untrusted:
                ordered = [owners[chunks.index(c)].dedup(c) for c in ordered]
            out = b"".join(ordered)
            self.report(out)
            return out
        if untrusted:
            # The ULID de-duplication below also removes a source's repeats
            # within this batch; only a repeat of its previous batch's last
            # ULID needs looking for.
            for i, (s, c) in enumerate(zip(owners, chunks)):
                if c.startswith(s.last or b"\n"):
                    chunks[i] = s.dedup(c)
                else:
                    s.last = last_ulid(c)
        return self.interleaved(chunks)

    def interleaved(self, chunks: list[bytes]) -> bytes:
        """4. Overlapping chunks: split, sort, drop copies, join.

        A plain sort compares whole lines in C without building keys and
        orders by ULID; all copies of a ULID end up adjacent.  Where copies
        are byte-identical, dropping all but the first is all there is to do.
        If two lines share a ULID but not their bytes, the payload decided
        their order, so a stable key sort redoes the batch and the earliest
        source wins.  Two equivalent ways to check, picked by whether the
        previous batch had copies: keys of all lines (cheapest when there
        are none), or whole-line comparison first and keys of the survivors
        (cheapest when half the lines are copies, as with replicas).
        """
        lines: list[bytes] = []
        for c in chunks:
            lines += _lines(c)
        lines.sort()
        new: list[bool] | None = None
        if self.dups_seen:
            new = list(map(ne, lines, chain((None,), lines)))
            uniq = list(compress(lines, new))
            keys = list(map(ulid_of, uniq))
            ok = all(map(lt, keys, islice(keys, 1, None)))
            self.dups_seen = len(uniq) < len(lines)
        else:
            keys = list(map(ulid_of, lines))
            if all(map(ne, keys, islice(keys, 1, None))):
                uniq, ok = lines, True
            else:
                new = list(map(ne, keys, chain((None,), keys)))
                dup = list(map(not_, new))
                uniq = list(compress(lines, new))
                ok = all(map(eq, compress(lines, dup), compress(chain((None,), lines), dup)))
                self.dups_seen = True
        if not ok:
            lines = []
            for c in chunks:
                lines += _lines(c)
            lines.sort(key=ulid_of)  # stable: source order among equal ULIDs
            keys = list(map(ulid_of, lines))
            new = list(map(ne, keys, chain((None,), keys)))
            uniq = list(compress(lines, new))
        if self.need > 1:
            assert self.on_short is not None
            if new is None:
                short: Iterable[bytes] = lines
            else:
                # The first copy at i has fewer than ``need`` copies iff one
                # of the next need-1 lines starts a new ULID (bools only).
                ext = new + [True] * self.need
                nxt: Iterable[bool] = islice(ext, 1, None)
                for j in range(2, self.need):
                    nxt = map(or_, nxt, islice(ext, j, None))
                short = compress(lines, map(and_, new, nxt))
            picked = list(short)
            if picked:
                self.on_short(_join(picked))
        return _join(uniq)


__all__ = ["is_strictly_sorted", "merge_records", "sort_records"]
