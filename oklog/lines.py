"""Re-chunking arbitrary byte streams into blocks of whole lines.

HTTP bodies and socket reads arrive in chunks that cut records anywhere;
everything downstream (validation, merge, scan) wants blocks of whole
``LF``-terminated lines.  ``LineSplitter`` is the sans-IO core;
``iter_blocks``/``aiter_blocks`` wrap it for sync and async iterables.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Literal

from oklog.errors import CorruptSegment

_LF = b"\n"

TailPolicy = Literal["error", "keep", "drop"]
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
    line is kept for the next chunk.  At end of input call ``flush()`` for
    the pending complete lines, then ``end()`` for the final partial line,
    handled by ``final_tail``: ``"error"`` raises ``CorruptSegment``,
    ``"keep"`` returns it as is (without LF), ``"drop"`` discards it.

    ``max_tail`` bounds the memory of a partial line: a line that grows past
    it without an LF raises ``CorruptSegment``.  A chunk that ends with LF
    while nothing is pending is returned as the very same object (no copy).
    """

    def __init__(
        self,
        *,
        final_tail: TailPolicy = "error",
        min_size: int = 0,
        max_tail: int | None = None,
    ) -> None:
        if final_tail not in ("error", "keep", "drop"):
            raise ValueError(f"final_tail must be error, keep or drop: {final_tail!r}")
        self.final_tail = final_tail
        self.min_size = min_size
        self.max_tail = max_tail
        self._ready = Pieces()  # complete lines not handed out yet
        self._tail = Pieces()  # the partial last line

    def feed(self, chunk: Chunk) -> bytes:
        """Take a chunk; return the whole lines now ready (maybe ``b""``)."""
        if not chunk:
            return b""
        # bytearray, memoryview: copy once, so we own what we keep
        data = chunk if type(chunk) is bytes else bytes(chunk)
        i = data.rfind(_LF)
        if i < 0:
            self._keep_tail(data)
            return b""
        self._tail.move_to(self._ready)
        i += 1
        if i == len(data):
            self._ready.add(data)
        else:
            self._ready.add(data[:i])
            self._keep_tail(data[i:])
        if self._ready.size >= self.min_size:
            return self.flush()
        return b""

    def _keep_tail(self, piece: bytes) -> None:
        self._tail.add(piece)
        if self.max_tail is not None and self._tail.size > self.max_tail:
            raise CorruptSegment(f"line longer than {self.max_tail} bytes without LF")

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
            return tail
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
    max_tail: int | None = None,
) -> Iterator[bytes]:
    """Re-chunk a byte stream into non-empty blocks of whole lines.

    See :class:`LineSplitter` for the parameters.  With ``"error"`` the
    complete lines before a partial final line are still yielded first.
    """
    sp = LineSplitter(final_tail=final_tail, min_size=min_size, max_tail=max_tail)
    for chunk in chunks:
        out = sp.feed(chunk)
        if out:
            yield out
    for out in sp.finish():
        yield out


async def aiter_blocks(
    chunks: AsyncIterable[Chunk],
    *,
    final_tail: TailPolicy = "error",
    min_size: int = 0,
    max_tail: int | None = None,
) -> AsyncIterator[bytes]:
    """:func:`iter_blocks` for an async iterable (e.g. an HTTP body stream)."""
    sp = LineSplitter(final_tail=final_tail, min_size=min_size, max_tail=max_tail)
    async for chunk in chunks:
        out = sp.feed(chunk)
        if out:
            yield out
    for out in sp.finish():
        yield out
