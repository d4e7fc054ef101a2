"""Small filesystem helpers shared by the ingest and store file layers."""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

from .errors import DirectoryLocked


def lock_directory(path: Path) -> int:
    """Create ``path`` and hold its ``LOCK`` file (flock) for this process.

    Returns the lock's file descriptor; closing it releases the lock.  The
    kernel drops the lock when the process dies, so a crash never leaves a
    stale lock behind.
    """
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryLocked(f"{path} is in use by another oklog process") from None
    return fd


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_PAGE_MASK = ~(mmap.PAGESIZE - 1)
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def drop_pages(buf: object, done: int, pos: int) -> int:
    """Drop the pages of a file mapping ``buf`` from ``done`` up to ``pos``
    from this process (``MADV_DONTNEED``; the page cache keeps them), and
    return where the next call starts.  Reading a whole file through a
    mapping otherwise keeps every page of it resident (measured: a node's
    peak RSS doubled).  Anything but an ``mmap`` is left alone."""
    upto = pos & _PAGE_MASK
    if upto > done and isinstance(buf, mmap.mmap) and _DONTNEED is not None:
        buf.madvise(_DONTNEED, done, upto - done)
        return upto
    return done
