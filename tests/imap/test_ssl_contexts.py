"""Verifying TLS contexts are built once in the parent and shared by every tenant it forks."""
from __future__ import annotations

import multiprocessing
import os
import time

from tenant_proc import errors
from tenant_proc.imap import connect, tls
from tenant_proc.spec import Secret, TenantSpec


def spec(ca_file: str | None, security: str = "tls") -> TenantSpec:
    return TenantSpec(id="a", name="A", host="127.0.0.1", port=993, security=security,  # type: ignore[arg-type]
                      username="u", password=Secret("p"), ca_file=ca_file)


def _child_reports_identity(ca_file: str, conn) -> None:
    conn.send(id(tls.ssl_context(ca_file)))
    conn.close()


def test_forked_tenant_reuses_the_parents_context(certs):
    ca = str(certs.ca_cert)
    tls.preload_ssl_contexts([spec(ca), spec(None, security="plain")])
    parent_id = id(tls.ssl_context(ca))
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_child_reports_identity, args=(ca, there))
    child.start()
    assert here.recv() == parent_id  # same object: inherited, not rebuilt in the child
    child.join(5)


def test_an_updated_ca_file_is_read_again(tmp_path, certs):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certs.ca_cert.read_bytes())
    first = tls.ssl_context(str(ca))
    assert tls.ssl_context(str(ca)) is first
    later = time.time() + 5
    os.utime(ca, (later, later))
    assert tls.ssl_context(str(ca)) is not first


def test_a_missing_ca_file_is_a_config_error(tmp_path):
    import pytest

    with pytest.raises(errors.FatalError) as info:
        connect.open_client(spec(str(tmp_path / "gone.pem")))
    assert info.value.kind == "config" and "gone.pem" in info.value.reason
