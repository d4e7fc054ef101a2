"""The n-gram block index: which blocks of a segment can hold a literal.

Theory of operation
-------------------
Every block of a segment is a few thousand records.  Its *grams* are the
distinct trigrams (three consecutive bytes, exact case) of its records'
payloads and topics; the ULID and the space after it are left out (they
would make every trigram of ``[0-9A-Z]`` look present everywhere).  A
segment's index is one pyroaring ``BitMap64`` of ``gram << 32 | block``:
the blocks holding a gram are one contiguous range of it.

A record matching a literal ``q`` (3+ bytes) holds every trigram of ``q``
in its payload, so only blocks holding all of them can match; other blocks
are never read.  Shorter literals prune nothing.  Case-insensitive literals
look up every case variant of each trigram.  The index is a filter only:
it may keep a block that does not match, never drops one that does.

Measured on access logs (docs/performance.md): trigrams cost about 0.1% of
the data on disk and about 5 ms per MiB to build with numpy; a planted rare
token leaves exactly the blocks that hold it; random hex tokens are not
pruned (every hex trigram is in every block of such logs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pyroaring import BitMap64

__all__ = ["HEADER", "GramIndex", "IndexBuilder", "block_grams", "build", "literal_grams", "scratch"]

HEADER = 27  # ULID + SP: not indexed
_N = 3
#: Distinct trigrams beyond which a block is not indexed (access logs: ~7-10
#: thousand per MiB; random bytes: millions).
MAX_GRAMS = 1 << 16
_OFFSETS = np.arange(HEADER, dtype=np.int64)
_MASK24 = np.uint32(0xFFFFFF)


def block_grams(block: bytes, table: np.ndarray | None = None) -> np.ndarray:
    """The distinct trigram codes (``b0 | b1 << 8 | b2 << 16``) of one block
    of whole records, headers left out, as a sorted ``uint32`` array.

    ``table`` is scratch space (``2**24`` bools, all False; left so).
    """
    n = len(block)
    if n < 4:
        return np.zeros(0, np.uint32)
    if table is None:
        table = np.zeros(1 << 24, np.bool_)
    # overlapping little-endian 4-byte windows: the low 3 bytes are the trigram
    windows = np.ndarray(shape=(n - 3,), dtype="<u4", buffer=block, strides=(1,))
    codes = windows & _MASK24
    starts = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + 1
    starts[-1] = 0  # the last LF ends the block; the first line starts at 0
    header = (starts[:, None] + _OFFSETS).ravel()
    codes[header[header < len(codes)]] = 0  # 0: "no gram" (NUL NUL NUL)
    table[codes] = True
    found = np.flatnonzero(table)
    table[found] = False
    if len(found) and found[0] == 0:
        found = found[1:]
    return found.astype(np.uint32)


def scratch() -> np.ndarray:
    """Scratch space for ``block_grams`` (16 MiB; reuse it across blocks)."""
    return np.zeros(1 << 24, np.bool_)


class IndexBuilder:
    """A segment's index, built block by block in block order: memory is the
    bitmap's and one block's grams, not every block's grams at once (which
    held ~0.2 MB per MiB of data until the end: ~100 MB more resident
    memory for a 400 MiB segment's sidecar rebuilt at start).  A block with
    more than ``MAX_GRAMS`` distinct trigrams (random bytes, base64) is
    left out and always read: indexing it would cost more than the data."""

    def __init__(self) -> None:
        self._bitmap = BitMap64()
        self._blocks = 0
        self._wild: list[int] = []
        self._scratch = scratch()

    def add(self, block: bytes) -> None:
        """The next block of the segment."""
        grams = block_grams(block, self._scratch)
        i = self._blocks
        self._blocks += 1
        if len(grams) > MAX_GRAMS:
            self._wild.append(i)
        elif len(grams):
            self._bitmap.update((grams.astype(np.uint64) << np.uint64(32)) | np.uint64(i))

    def finish(self) -> GramIndex:
        self._bitmap.run_optimize()
        return GramIndex(self._bitmap, self._blocks, self._wild)


def build(blocks: Iterable[bytes]) -> GramIndex:
    """The index of a segment's blocks, in block order."""
    builder = IndexBuilder()
    for block in blocks:
        builder.add(block)
    return builder.finish()


def _code(gram: bytes) -> int:
    return gram[0] | gram[1] << 8 | gram[2] << 16


def literal_grams(literal: bytes, fold: bool = False) -> list[list[int]]:
    """The grams a block must hold for ``literal`` to occur in it: one list
    of alternatives per trigram (one code, or every case variant with
    ``fold``).  Empty for a literal shorter than a trigram."""
    out = []
    for i in range(len(literal) - _N + 1):
        gram = literal[i : i + _N]
        if b"\n" in gram or gram == b"\0\0\0":  # code 0 marks the headers: never indexed
            continue
        if not fold:
            out.append([_code(gram)])
            continue
        variants = {b""}
        for byte in gram:
            ch = bytes([byte])
            options = {ch.lower(), ch.upper()}
            variants = {v + o for v in variants for o in options}
        out.append(sorted(_code(v) for v in variants))
    return out


class GramIndex:
    """A segment's index, answering "which blocks can hold these grams"."""

    __slots__ = ("bitmap", "blocks", "wild", "_wild_mask")

    def __init__(self, bitmap: BitMap64, blocks: int, wild: Sequence[int] = ()) -> None:
        self.bitmap = bitmap
        self.blocks = blocks
        self.wild = list(wild)  # blocks not indexed: they may hold anything
        self._wild_mask = sum(1 << i for i in self.wild)

    def blocks_with(self, code: int) -> int:
        """Blocks that may hold one gram, as a bit mask (bit i: block i)."""
        mask = self._wild_mask
        base = code << 32
        for value in self.bitmap.iter_equal_or_larger(base):
            if value >> 32 != code:
                break
            block = value & 0xFFFFFFFF
            if block < self.blocks:  # (a sidecar's index never names a block it lacks)
                mask |= 1 << block
        return mask

    def candidates(self, clauses: Sequence[Sequence[Sequence[list[int]]]]) -> int:
        """Blocks that can match, as a bit mask.

        ``clauses`` is an AND of clauses; a clause is an OR of literals; a
        literal is an AND of grams; a gram is an OR of codes (its case
        variants).  An empty literal (too short to prune) allows every block.
        """
        every = (1 << self.blocks) - 1
        mask = every
        for clause in clauses:
            allowed = 0
            for grams in clause:
                lit = every
                for codes in grams:
                    gram = 0
                    for code in codes:
                        gram |= self.blocks_with(code)
                    lit &= gram
                    if not lit:
                        break
                allowed |= lit
                if allowed == every:
                    break
            mask &= allowed
            if not mask:
                break
        return mask
