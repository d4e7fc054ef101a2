"""The allocator tuning a node applies at start (``oklog.malloc``)."""

from __future__ import annotations

import ctypes
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


def mapped_on_its_own() -> bool:
    """Whether a fresh 15 MiB ``malloc`` gets an mmap(2) of its own (glibc's
    default for a buffer that size) rather than arena memory kept for reuse
    (below ``oklog.malloc.MMAP_THRESHOLD``).  Module level: a scan worker
    runs it by name."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblks
    buf = libc.malloc(15 << 20)
    mapped = libc.mallinfo2().hblks > before
    libc.free(buf)
    return mapped


def _in_child(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    return out.split()[-1]


def test_a_node_and_its_scan_workers_are_tuned() -> None:
    """The tuning is in effect where the buffers are: a node's process
    (``oklog.cli``) and its scan worker processes (``workers._init_worker``)."""
    if platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("mallopt thresholds and mallinfo2 are glibc's (2.33+)")
    assert _in_child("from tests.test_malloc import mapped_on_its_own as f; print(f())") == "True"
    node = _in_child(
        "import sys, oklog.node\n"
        "from tests.test_malloc import mapped_on_its_own\n"
        "async def run_node(cfg): print(mapped_on_its_own())\n"
        "oklog.node.run_node = run_node  # the node's process, up to where it would start serving\n"
        "sys.argv = ['oklog', 'ingeststore']\n"
        "from oklog.cli import main; main()\n")
    worker = _in_child(
        "import trio\n"
        "from oklog.query.workers import Scanner\n"
        "from tests.test_malloc import mapped_on_its_own\n"
        "async def main():\n"
        "    scanner = Scanner(1)\n"
        "    try:\n"
        "        await scanner.start()\n"
        "        print(await scanner.call(mapped_on_its_own))\n"
        "    finally:\n"
        "        scanner.close()\n"
        "trio.run(main)\n")
    assert (node, worker) == ("False", "False")
