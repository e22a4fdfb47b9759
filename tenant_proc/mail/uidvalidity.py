"""What to do when the server renumbers the folder (a new UIDVALIDITY: a mailbox migration,
an Exchange move, a restored backup).

The old UIDs mean nothing any more, and mail that was not handled yet is among the new UIDs
below the new UIDNEXT. `[imap] on_uidvalidity_change`:
- "reprocess_since_last" (default): restart at the first UID that arrived (INTERNALDATE, by
  day, as IMAP SEARCH SINCE counts) a day before the last email finished under the old
  UIDVALIDITY; up to the old UIDNEXT, every email whose Message-ID the ledger shows as handled
  is recorded `duplicate` instead of being handed over again. Nothing unhandled is dropped;
  an email without a Message-ID in that overlap may be handed over a second time.
- "skip_to_new": start at the new UIDNEXT (mail not yet handled is not handed over).
"""
from __future__ import annotations

import logging
from datetime import date
from typing import Any, NamedTuple

from imapclient import IMAPClient

from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import Checkpoint, StateStore

DAY = 86400.0


class RestartPoint(NamedTuple):
    last_uid: int  # the new checkpoint
    dedupe_until: int | None  # UIDs up to this are checked by Message-ID against the ledger


def restart_point(
    client: IMAPClient, spec: TenantSpec, store: StateStore, old: Checkpoint, uidvalidity: int,
    uidnext: int, log: logging.LoggerAdapter | logging.Logger,
) -> RestartPoint:
    skip = RestartPoint(uidnext - 1, None)
    mode = spec.imap.on_uidvalidity_change
    if mode == "skip_to_new":
        log.warning("UIDVALIDITY of %s changed from %d to %d: restarting from UID %d "
                    "(on_uidvalidity_change = skip_to_new)", spec.folder, old.uidvalidity,
                    uidvalidity, uidnext)
        return skip
    last_handled_at = getattr(store, "last_handled_at", None)
    since_epoch = last_handled_at(spec.id, spec.folder, old.uidvalidity) if last_handled_at else None
    if since_epoch is None:
        log.warning("UIDVALIDITY of %s changed from %d to %d and nothing was handled under the "
                    "old one: restarting from UID %d", spec.folder, old.uidvalidity, uidvalidity, uidnext)
        return skip
    since = date.fromtimestamp(since_epoch - DAY)  # SEARCH SINCE is by day, in the server's zone
    candidates = [u for u in client.search(["SINCE", since]) if u < uidnext]
    if not candidates:
        log.warning("UIDVALIDITY of %s changed from %d to %d; nothing arrived since %s: "
                    "restarting from UID %d", spec.folder, old.uidvalidity, uidvalidity, since, uidnext)
        return skip
    start = min(candidates)
    log.warning("UIDVALIDITY of %s changed from %d to %d: reprocessing UIDs %d..%d (arrived since "
                "%s), skipping Message-IDs already handled", spec.folder, old.uidvalidity,
                uidvalidity, start, uidnext - 1, since)
    return RestartPoint(start - 1, uidnext - 1)


def changed_on_server(client: IMAPClient, folder: str, uidvalidity: int) -> int | None:
    """The folder's UIDVALIDITY if it is no longer `uidvalidity` (asked with STATUS while
    connected: a server need not tell a selected session that the folder was renumbered)."""
    status: dict[bytes, Any] = client.folder_status(folder, [b"UIDVALIDITY", b"UIDNEXT"])
    current = int(status[b"UIDVALIDITY"])
    return current if current != uidvalidity else None

