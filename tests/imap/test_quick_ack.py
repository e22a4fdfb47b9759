"""The tenant's reads leave the connection in quick-ACK mode (tenant_proc/imap/quick_ack.py), on a real
Dovecot over TLS, STARTTLS and plain.

Linux turns delayed ACKs back on by itself ("pingpong" mode) once a connection's exchanges look
interactive, which a few commands and answers do; getsockopt(TCP_QUICKACK) then reads 0. Cyrus
and Courier write answers in small pieces with Nagle on, so a delayed ACK costs each reaction
~40 ms (bench/reaction_servers.py). Without re-arming before every read this reads 0.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tenant_proc.imap.beating_io import beat_while_reading
from tenant_proc.imap.connect import open_client
from tenant_proc.imap.fetching import survey
from tenant_proc.signin.login import login
from tests.process.test_tenant_process import make_spec
from tests.servers.imap.mail_helpers import make_message


@pytest.mark.parametrize("security", ["tls", "starttls", "plain"])
def test_the_pipelined_survey_leaves_delayed_acks_off(dovecot, tmp_path: Path, security: str):
    dovecot.add_user("alice", "alice-pw")
    dovecot.deliver("alice", make_message("one"))
    spec = make_spec(dovecot, tmp_path, user="alice", security=security)
    client = open_client(spec)
    try:
        beat_while_reading(client, lambda: None)
        login(client, spec)
        client.select_folder("INBOX", readonly=True)
        for _ in range(5):  # interactive enough for the kernel to delay ACKs again
            client.noop()
        sizes, early = survey(client, 0, 64 * 1024)  # the exchange the reaction pipelines
        assert list(sizes) == [1] and list(early) == [1]
        sock = client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    finally:
        client.logout()
