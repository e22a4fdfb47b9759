"""Which hosts are this machine: plain-text IMAP and http:// endpoints are allowed to them only."""
from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
