"""Timeouts that depend on each other: derived when the user left them unset, refused only when
two values the user set contradict each other.

A tenant blocked in one socket read sends no heartbeat, so every socket timeout outside IDLE must
stay below heartbeat_timeout, or a merely slow server gets a healthy tenant killed as hung. A user
who lowers only heartbeat_timeout (say to 5 s) means "notice hangs sooner", not "refuse to start
because the 25 s default command_timeout is now too long": the unset values follow it down.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Collection

from supervisor.config.settings import SupervisorSettings
from supervisor.errors import ConfigError
from tenant_proc.spec import ImapSettings, StateSpec

# Shares of heartbeat_timeout given to the values the user did not set. At the default
# heartbeat_timeout of 30 s they give exactly the documented defaults (5, 20 and 25 s), so a
# config that sets none of them behaves as before.
HEARTBEAT_INTERVAL_SHARE = 1 / 6
CONNECT_TIMEOUT_SHARE = 2 / 3
COMMAND_TIMEOUT_SHARE = 5 / 6
SOCKET_TIMEOUT_SHARES = {"connect_timeout": CONNECT_TIMEOUT_SHARE,
                         "command_timeout": COMMAND_TIMEOUT_SHARE}


def derive_timeouts(supervisor: SupervisorSettings, imap: ImapSettings,
                    supervisor_keys: Collection[str], imap_keys: Collection[str],
                    ) -> tuple[SupervisorSettings, ImapSettings]:
    """Fill in what the user left unset; raise ConfigError naming both sides of a contradiction.

    supervisor_keys / imap_keys: the keys the user set (file or IDLE_SUPERVISOR_* variables).
    - heartbeat_timeout unset but a socket timeout set at or above it: heartbeat_timeout is
      raised so that the slowest set timeout is its COMMAND_TIMEOUT_SHARE;
    - heartbeat_interval unset: min(default, heartbeat_timeout / 6);
    - connect_timeout / command_timeout unset: min(default, 2/3 resp. 5/6 of heartbeat_timeout).
    """
    defaults = type(supervisor)()
    user_socket = {k: getattr(imap, k) for k in SOCKET_TIMEOUT_SHARES if k in imap_keys}
    if "heartbeat_timeout" not in supervisor_keys and user_socket:
        slowest = max(user_socket.values())
        if slowest >= supervisor.heartbeat_timeout:
            supervisor = replace(supervisor, heartbeat_timeout=slowest / COMMAND_TIMEOUT_SHARE)
    heartbeat_timeout = supervisor.heartbeat_timeout
    if heartbeat_timeout <= 0:
        raise ConfigError("[supervisor] heartbeat_timeout must be above 0")
    if "heartbeat_interval" not in supervisor_keys:
        supervisor = replace(supervisor, heartbeat_interval=min(
            defaults.heartbeat_interval, heartbeat_timeout * HEARTBEAT_INTERVAL_SHARE))

    derived = {k: min(getattr(ImapSettings(), k), heartbeat_timeout * share)
               for k, share in SOCKET_TIMEOUT_SHARES.items() if k not in imap_keys}
    imap = replace(imap, **derived)
    for key, value in user_socket.items():
        if value >= heartbeat_timeout:
            raise ConfigError(
                f"[imap] {key} ({value:g}s) must be below [supervisor] heartbeat_timeout "
                f"({heartbeat_timeout:g}s): a tenant waiting that long on a slow server would be "
                f"killed as hung; lower {key}, raise heartbeat_timeout, or leave {key} unset to "
                "derive it")
    return supervisor, imap


# A company process beats (when one is due) before each request it makes without a heartbeat
# inside it (a state-store request, a webhook attempt, a token request), so its longest silence
# is one heartbeat_interval plus one request: half of what is left of heartbeat_timeout after
# the interval leaves the other half as margin for a loaded machine. At the defaults (30 s, 5 s)
# this is 12.5 s.
REQUEST_SHARE = 1 / 2


def request_bound(supervisor: SupervisorSettings) -> float:
    """The longest any one request of a company process may take, as a whole: the webhook's
    attempts and the token requests are cut to it, token_timeout may not exceed it."""
    return (supervisor.heartbeat_timeout - supervisor.heartbeat_interval) * REQUEST_SHARE


def store_request_timeout(supervisor: SupervisorSettings) -> float:
    """The whole-request bound of a tenant's Supabase state-store requests: the request bound,
    and at most StateSpec's default (10 s, the value every request had before the derivation)."""
    return min(StateSpec().request_timeout, request_bound(supervisor))
