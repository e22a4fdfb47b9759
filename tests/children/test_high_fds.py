"""A tenant forked late, after hundreds of siblings, inherits pipe fds numbered above 1024.

select.select() cannot watch such fds (FD_SETSIZE); the tenant must still idle and process
mail. Found by the 1,000-tenant benchmark, which stalled at 339 tenants (3 parent fds each).
"""
from __future__ import annotations

import os
import resource

import pytest

from tests.process.test_tenant_process import Tenant, make_spec
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


@pytest.fixture
def fds_above_1024():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is too low to place fds above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    null = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(null) for _ in range(1100)]  # the next fds opened get numbers > 1100
    try:
        yield
    finally:
        for fd in [null, *held]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_tenant_with_high_numbered_fds_idles_and_processes(dovecot, tmp_path, fds_above_1024):
    tenant = Tenant(make_spec(dovecot, tmp_path))
    try:
        assert tenant.conn.fileno() > 1024
        tenant.wait_state("idle")
        dovecot.deliver("alice", make_message("high fds"))
        tenant.wait_for(lambda m: m["type"] == "processed")
    finally:
        assert tenant.stop() == 0
