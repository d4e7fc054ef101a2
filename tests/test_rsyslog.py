"""Debian's rsyslog feeding a real node over TCP lines, as docs/operations.md
tells operators to set it up (skipped where rsyslog is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.nodeutil import Node, query, wait_for_records

pytestmark = pytest.mark.slow

RSYSLOGD = shutil.which("rsyslogd") or next(
    (p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if Path(p).exists()), None)

# The forwarding part is docs/operations.md's, word for word, but for the
# port; a private work directory and an imfile input replace the system's.
CONFIG = """\
global(workDirectory="{work}")
module(load="imfile")
input(type="imfile" file="{source}" tag="myapp:" freshStartTail="off")
template(name="oklog" type="string" string="%HOSTNAME% %programname% %msg%")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" template="oklog"
       action.resumeRetryCount="-1" queue.type="linkedList" queue.size="100000")
"""


@pytest.mark.skipif(RSYSLOGD is None, reason="rsyslogd is not installed (apt-get install rsyslog)")
def test_rsyslog_forwards_a_log_file_to_the_fast_port(tmp_path: Path) -> None:
    node = Node("ingeststore", tmp_path / "node", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off"])
    node.start()
    work = tmp_path / "rsyslog"
    work.mkdir()
    source = tmp_path / "myapp.log"
    lines = [b"req=%d status=%d path=/api/v1/items" % (i, 200 if i % 10 else 500) for i in range(3000)]
    source.write_bytes(b"\n".join(lines[:1000]) + b"\n")
    conf = work / "rsyslog.conf"
    conf.write_text(CONFIG.format(work=work, source=source, port=node.fast_port))
    checked = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    rsyslog = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "pid")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        with source.open("ab") as f:  # appended while rsyslog follows the file
            f.write(b"\n".join(lines[1000:]) + b"\n")
        body = wait_for_records(node.api, len(lines), timeout=60)
        records = body.split(b"\n")[:-1]
        # each record: ULID default HOSTNAME myapp <the line>
        payloads = [r.split(b" ", 4)[4] for r in records]
        assert payloads == lines
        assert all(r.split(b" ")[3] == b"myapp" for r in records)
        errors = query(node.api, **{"from": "1h", "to": "now", "q": "status=500"}).content
        assert errors.count(b"\n") == 300
        assert rsyslog.poll() is None, rsyslog.stderr.read() if rsyslog.stderr else ""
    finally:
        rsyslog.terminate()
        rsyslog.wait(timeout=10)
        node.kill()
