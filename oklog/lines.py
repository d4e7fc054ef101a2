"""Byte streams cut anywhere → blocks of whole lines: the one line splitter.

Socket reads, pipes and HTTP bodies arrive in chunks that cut lines
anywhere; everything downstream (stamping, validation, merge, scan, the
query CLI's output) wants *blocks*: ``bytes`` of one or more whole lines,
each ending in LF.  ``LineSplitter`` is the sans-IO core used by the ingest
servers, the forwarder, the store's upload and query readers and the query
CLI; ``iter_blocks``/``aiter_blocks`` wrap it for sync and async iterables.
``Pieces`` is how oklog collects bytes to join once.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Literal

from oklog.errors import CorruptSegment

_LF = b"\n"

#: What to do with bytes after the last LF at the end of input.
TailPolicy = Literal["error", "keep", "drop"]
#: What to do with a line longer than ``max_line``.
LongPolicy = Literal["error", "drop"]
Chunk = bytes | bytearray | memoryview


class Pieces:
    """Byte pieces collected to be joined once, with their total size.

    The one way oklog accumulates bytes: append pieces as they come, ``take``
    them as one ``bytes`` (a lone piece is returned as is, never copied).
    """

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self.parts)

    def add(self, piece: bytes) -> None:
        self.parts.append(piece)
        self.size += len(piece)

    def move_to(self, other: "Pieces") -> None:
        """Append all of these pieces to ``other`` and empty this one."""
        other.parts += self.parts
        other.size += self.size
        self.clear()

    def take(self) -> bytes:
        parts = self.parts
        out = b"" if not parts else parts[0] if len(parts) == 1 else b"".join(parts)
        self.clear()
        return out

    def clear(self) -> None:
        self.parts = []
        self.size = 0


class LineSplitter:
    """Turns arbitrary byte chunks into blocks of whole lines (sans-IO).

    ``feed(chunk)`` returns the complete lines available so far (``b""`` if
    none, or if fewer than ``min_size`` bytes are pending); the partial last
    line is kept for the next chunk.  At end of input, ``finish()`` yields
    the pending lines and then the final partial line, handled by
    ``final_tail``: ``"error"`` raises ``CorruptSegment`` (after the whole
    lines are out), ``"keep"`` returns it as a line (an LF appended),
    ``"drop"`` discards it.

    ``max_line`` bounds a line's length (without its LF) and so the memory
    held for a partial line.  A longer line is, per ``too_long``, dropped
    and counted in ``rejected`` (the stream goes on with the next line) or
    raises ``CorruptSegment``.  A chunk that ends with LF while nothing is
    pending is returned as the very same object (no copy).
    """

    def __init__(
        self,
        *,
        final_tail: TailPolicy = "error",
        min_size: int = 0,
        max_line: int | None = None,
        too_long: LongPolicy = "error",
    ) -> None:
        if final_tail not in ("error", "keep", "drop"):
            raise ValueError(f"final_tail must be error, keep or drop: {final_tail!r}")
        if too_long not in ("error", "drop"):
            raise ValueError(f"too_long must be error or drop: {too_long!r}")
        self.final_tail = final_tail
        self.min_size = min_size
        self.max_line = max_line
        self.too_long = too_long
        self.rejected = 0  # over-long lines dropped (too_long="drop")
        self._ready = Pieces()  # complete lines not handed out yet
        self._tail = Pieces()  # the partial last line
        self._skipping = False  # inside an over-long line: discard up to its LF

    def feed(self, chunk: Chunk) -> bytes:
        """Take a chunk; return the whole lines now ready (maybe ``b""``)."""
        if not chunk:
            return b""
        # bytearray, memoryview: copy once, so we own what we keep
        data = chunk if type(chunk) is bytes else bytes(chunk)
        if self._skipping:
            nl = data.find(_LF)
            if nl < 0:
                return b""
            self._skipping = False
            data = data[nl + 1 :]
            if not data:
                return b""
        i = data.rfind(_LF)
        if i < 0:
            self._keep_tail(data)
            return b""
        i += 1
        if self.max_line is not None and self._tail.size + i > self.max_line:
            self._check_lines(data, i)  # some line here may be too long
        else:
            self._tail.move_to(self._ready)
            self._ready.add(data if i == len(data) else data[:i])
        if i < len(data):
            self._keep_tail(data[i:])
        if self._ready.size >= self.min_size:
            return self.flush()
        return b""

    def _check_lines(self, data: bytes, end: int) -> None:
        """Queue ``data[:end]`` (whole lines, the first one continuing the
        tail), leaving out lines longer than ``max_line``."""
        limit = self.max_line
        assert limit is not None
        first = data.find(_LF)
        if self._tail.size + first > limit:
            self._reject()
            self._tail.clear()
        else:
            self._tail.move_to(self._ready)
            self._ready.add(data[: first + 1])
        rest = data[first + 1 : end]
        if len(rest) > limit + 1:  # only then can a whole line in it be too long
            lines = rest.split(_LF)
            lines.pop()  # after the final LF
            if max(map(len, lines)) > limit:
                kept = [line for line in lines if len(line) <= limit]
                self.rejected += len(lines) - len(kept)
                kept.append(b"")
                rest = _LF.join(kept) if len(kept) > 1 else b""
        if rest:
            self._ready.add(rest)

    def _keep_tail(self, piece: bytes) -> None:
        self._tail.add(piece)
        if self.max_line is not None and self._tail.size > self.max_line:
            self._reject()
            self._tail.clear()
            self._skipping = True

    def _reject(self) -> None:
        if self.too_long == "error":
            raise CorruptSegment(f"line longer than {self.max_line} bytes")
        self.rejected += 1

    def flush(self) -> bytes:
        """All pending complete lines, whatever ``min_size`` says."""
        return self._ready.take()

    @property
    def pending_tail(self) -> int:
        """Bytes of the partial line held back."""
        return self._tail.size

    def end(self) -> bytes:
        """The final partial line, per ``final_tail`` (``b""`` if none)."""
        if not self._tail:
            return b""
        tail = self._tail.take()
        if self.final_tail == "error":
            raise CorruptSegment(f"input ends inside a line ({len(tail)} bytes without LF)")
        if self.final_tail == "keep":
            return tail + _LF
        return b""

    def finish(self) -> Iterator[bytes]:
        """End of input: the pending complete lines, then the final tail
        (whose ``"error"`` policy raises only after those lines are out)."""
        out = self.flush()
        if out:
            yield out
        out = self.end()
        if out:
            yield out


def iter_blocks(
    chunks: Iterable[Chunk],
    *,
    final_tail: TailPolicy = "error",
    min_size: int = 0,
    max_line: int | None = None,
) -> Iterator[bytes]:
    """Re-chunk a byte stream into non-empty blocks of whole lines.

    See :class:`LineSplitter` for the parameters (a line over ``max_line``
    raises ``CorruptSegment``).  With ``"error"`` the complete lines before
    a partial final line are still yielded first.
    """
    sp = LineSplitter(final_tail=final_tail, min_size=min_size, max_line=max_line)
    for chunk in chunks:
        out = sp.feed(chunk)
        if out:
            yield out
    yield from sp.finish()


async def aiter_blocks(
    chunks: AsyncIterable[Chunk],
    *,
    final_tail: TailPolicy = "error",
    min_size: int = 0,
    max_line: int | None = None,
) -> AsyncIterator[bytes]:
    """:func:`iter_blocks` for an async iterable (e.g. an HTTP body stream)."""
    sp = LineSplitter(final_tail=final_tail, min_size=min_size, max_line=max_line)
    async for chunk in chunks:
        out = sp.feed(chunk)
        if out:
            yield out
    for out in sp.finish():
        yield out
