"""Test certificates made with the ``openssl`` command line.

``make_pki(dir)`` writes a self-signed CA, a node certificate for
127.0.0.1/localhost (usable as server and as client certificate: nodes
present theirs to their peers under mTLS), a client certificate signed by
the same CA, and a second, unrelated CA with a client certificate of its
own (one the nodes must refuse).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


@dataclass(frozen=True)
class Pki:
    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path  # signed by other_ca
    stranger_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
    extfile.write_text(ext)
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=d)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile), cwd=d)
    key.chmod(0o600)
    return cert, key


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca = _ca(d, "ca")
    other = _ca(d, "other-ca")
    node = _leaf(d, "node", ca, "basicConstraints=CA:FALSE\n"
                 "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                 "extendedKeyUsage=serverAuth,clientAuth\n")
    client = _leaf(d, "client", ca, "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    stranger = _leaf(d, "stranger", other, "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    return Pki(ca[0], node[0], node[1], client[0], client[1], other[0], stranger[0], stranger[1])
