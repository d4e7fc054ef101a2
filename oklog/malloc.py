"""The C allocator, tuned for a node's big short-lived buffers.

A query that keeps most records allocates a fresh ~1 MiB ``bytes`` per
decompressed block, in scan threads, and frees it as soon as it is sent.
glibc's defaults hand such blocks back to the kernel right away (they are
above its trim threshold, or mapped on their own), so the next block faults
its pages in again: measured, ~0.1 s of kernel time per 500 MB answered,
15% of the node's CPU for a match-everything query.  Keeping up to a few
blocks' worth of freed memory per allocator arena removes that, for about
35 MB more resident memory under a query loop (well within the budget).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("oklog.node")

# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks below this come from the arenas (reused) rather than mmap(2) of their own.
MMAP_THRESHOLD = 4 << 20
#: Free memory an arena keeps before it gives the top of its heap back.
TRIM_THRESHOLD = 32 << 20


def tune() -> bool:
    """Set the thresholds where the C library is glibc (True); elsewhere
    (musl, macOS: no such knobs) nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("event=malloc_tuned ok=%s", done)
    return done
