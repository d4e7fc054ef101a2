"""A test-only hook that parks a consume transaction at one of its stages.

The fault-injection suite (``tests/test_faults.py``) must SIGKILL a store
while its consumer is at a known stage of the transaction -- after it
gathered and read segments, after the first of its uploads, after
replicating but before committing -- and a kill timed by sleeping would
land anywhere.  So a node started with the environment variable
``OKLOG_TEST_PARK=DIR`` (read once, when its consumers are built) checks,
at each stage, for an *arm file* ``DIR/STAGE``:

- ``gather``: the batch holds its first segment (claimed and read whole at
  its ingester, spooled here; nothing replicated yet);
- ``replicate``: the first store took the upload and others are still to
  go (only when the replication factor is 2 or more);
- ``commit``: every upload succeeded; nothing is committed yet.

The first consumer of any node to reach an armed stage takes the arm file
by renaming it to ``DIR/STAGE.parked.PID`` (a rename is atomic: one winner
across the whole cluster), logs ``event=test_parked`` and waits there while
that file exists.  The test waits for the file, then kills the process
whose pid it names -- or deletes the file to let the transaction go on.

Without the variable (every production node) nothing is checked: the hook
costs one ``is None`` test per stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import trio

log = logging.getLogger("oklog.consume")

ENV = "OKLOG_TEST_PARK"
STAGES = ("gather", "replicate", "commit")
POLL = 0.05  # seconds between checks of a parked stage's file


class Park:
    """Arm files in one directory; ``at(stage)`` parks there when armed."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Park | None":
        value = environ.get(ENV, "")
        return cls(Path(value)) if value else None

    async def at(self, stage: str) -> None:
        """Park here while the test wants it (see the module docstring)."""
        if stage not in STAGES:
            raise ValueError(f"unknown consume stage {stage!r}")
        parked = self.directory / f"{stage}.parked.{os.getpid()}"
        try:
            os.rename(self.directory / stage, parked)
        except FileNotFoundError:
            return  # not armed, or another consumer took it first
        log.warning("event=test_parked stage=%s marker=%s", stage, parked)
        while parked.exists():
            await trio.sleep(POLL)
        log.warning("event=test_released stage=%s", stage)
