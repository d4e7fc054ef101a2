"""Small filesystem helpers shared by the ingest and store file layers."""

from __future__ import annotations

import fcntl
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
