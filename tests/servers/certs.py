"""Test certificates made with the `openssl` CLI.

Two chains are produced so tests can check both sides of TLS verification:

* a private CA plus a server certificate it signed (the "trusted" setup: clients
  pass ``cafile=ca.pem`` and verification succeeds), and
* an unrelated self-signed certificate for the same names (the "untrusted"
  setup: verification must fail even when the client trusts our CA).

Generating RSA keys takes about a second, so ``session_certs()`` caches one set
per process (one pytest session) in a temp dir removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Every loopback address the Dovecot harness listens on, plus the name, so a
# client may connect to any of them with hostname checking switched on.
SUBJECT_ALT_NAMES = "IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,IP:127.0.0.4,DNS:localhost"
DAYS = "3650"
OPENSSL_TIMEOUT = 30.0  # seconds; RSA-2048 keygen is well under 1 s on a normal machine


@dataclass(frozen=True)
class CertPaths:
    """Where the generated PEM files live."""

    directory: Path
    ca_cert: Path         # ca.pem: the private CA clients trust via cafile=
    ca_key: Path          # ca.key
    server_cert: Path     # server.pem: CN=localhost, signed by the CA
    server_key: Path      # server.key
    untrusted_cert: Path  # untrusted.pem: self-signed, same names, not from the CA
    untrusted_key: Path   # untrusted.key


def _openssl(*args: str, cwd: Path) -> None:
    """Run one openssl command; raise with its stderr so failures are readable."""
    proc = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")


def _make_ca(d: Path) -> None:
    # Explicit CA extensions: Python >= 3.13 turns on VERIFY_X509_STRICT, which
    # rejects CAs without keyUsage / key identifiers.
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS,
        "-keyout", "ca.key", "-out", "ca.pem",
        "-subj", "/CN=idle-supervisor test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=d,
    )


def _make_server(d: Path) -> None:
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=d,
    )
    # `openssl x509 -req` ignores CSR extensions, so the SAN goes in an extfile.
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={SUBJECT_ALT_NAMES}\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")),  # no ca.srl file
        "-days", DAYS, "-extfile", "server.ext", "-out", "server.pem",
        cwd=d,
    )


def _make_untrusted(d: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS,
        "-keyout", "untrusted.key", "-out", "untrusted.pem", "-subj", "/CN=localhost",
        "-addext", f"subjectAltName={SUBJECT_ALT_NAMES}",
        cwd=d,
    )


def generate_certs(directory: Path) -> CertPaths:
    """Create the CA, the CA-signed server cert and the untrusted cert in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _make_ca(directory)
    _make_server(directory)
    _make_untrusted(directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    # Certificates must be world-readable: as root, Dovecot hands them to
    # processes running as unprivileged users.
    for pem in directory.glob("*.pem"):
        pem.chmod(0o644)
    return CertPaths(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        untrusted_cert=directory / "untrusted.pem",
        untrusted_key=directory / "untrusted.key",
    )


@functools.lru_cache(maxsize=1)
def session_certs() -> CertPaths:
    """One cached set of certificates for this process, deleted at interpreter exit."""
    directory = Path(tempfile.mkdtemp(prefix="idle-sup-certs-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return generate_certs(directory)
