"""Imported by the scan workers' fork server only: tie its life to the node.

A node killed with SIGKILL runs no cleanup, and its fork server and scan
workers would live on as orphans.  Linux's ``PR_SET_PDEATHSIG`` has the
kernel kill this process when its parent dies; ``die_with_parent`` does
the same for each worker (the fork server's children).
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to do
        return
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


die_with_parent()  # the fork server, when it imports this module
