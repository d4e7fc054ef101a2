"""Sorting a stream of records that does not fit in memory (external sort).

Theory of operation: blocks are gathered into *runs* of about ``RUN_SIZE``
bytes; each run is sorted in memory (``sort_records``: one C sort of its
lines, duplicate ULIDs dropped) and appended to a scratch file.  A single
run is written out directly; several are k-way merged from the mapped
scratch file (``merge_records``, which also drops a ULID repeated across
runs).  Memory stays at about two runs, whatever the input size.  Used for
replicate uploads that arrive unsorted and for repairing unsorted segments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from oklog.lines import Pieces
from oklog.records.merge import merge_records, sort_records
from oklog.segment.plain import PlainReader

__all__ = ["RUN_SIZE", "sort_blocks"]

RUN_SIZE = 32 << 20


def sort_blocks(blocks: Iterable[bytes], scratch: Path, run_size: int = RUN_SIZE) -> Iterator[bytes]:
    """The records of ``blocks`` (whole lines) sorted by ULID, each ULID once
    (the first of equal ULIDs wins).  ``scratch`` is a file path to use for
    the runs; it is removed when the iteration ends."""
    runs: list[tuple[int, int]] = []  # (offset, length) in the scratch file
    pending = Pieces()
    reader: PlainReader | None = None
    try:
        with open(scratch, "wb") as out:

            def spill(run: bytes) -> None:
                runs.append((out.tell(), len(run)))
                out.write(run)

            for block in blocks:
                pending.add(block)
                if pending.size >= run_size:
                    spill(sort_records(pending.take()))
            last = sort_records(pending.take())
            if runs and last:
                spill(last)
        if not runs:  # it all fitted in one run: no merge needed
            if last:
                yield last
            return
        del last
        reader = PlainReader(scratch)
        sources = [reader.span(start, start + length) for start, length in runs]
        yield from merge_records(sources, trusted_unique=True)
    finally:
        if reader is not None:
            reader.close()
        scratch.unlink(missing_ok=True)
