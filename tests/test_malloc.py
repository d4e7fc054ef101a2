"""The allocator tuning a node applies at start (``oklog.malloc``)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


def test_the_allocator_is_tuned_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt thresholds are glibc's")
    # in a child: the thresholds are process-wide
    out = subprocess.run([sys.executable, "-c", "from oklog import malloc; print(malloc.tune())"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
