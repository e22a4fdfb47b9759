"""The processed row of the email handled last, written with the next UID's "handling" mark.

A backlog costs the ledger two commits per email: the "handling" mark before the handler
runs, the processed row after it returns. A commit that writes pages costs ~80 us here, so
the two were most of a tenant's overhead over a bare FETCH + parse loop (bench/burst.py). A
store with finish_then_begin (SQLite) writes the row of email k and the mark of email k+1 in
one transaction: one commit per email, and the order a crash sees is unchanged (k's row after
k's handler returned, k+1's mark durable before k+1's handler runs; a crash before that commit
leaves k "handling", handed over again as redelivered: the same window as a crash just before
a separate mark_done).

What may share a transaction with a "handling" mark: only rows of emails whose handler has
already returned. Never the marks of a whole batch in one commit before its first handler: a
crash in the k-th handler would leave every later UID "handling" without its handler having
run, and each restart would count a death against all of them (redelivered for nothing, then
given up as failed after max_attempts: mail lost). Nor the processed rows of a batch in one
commit after its last handler: a crash would hand every email of the batch over twice.

The held row waits only for the next mark (microseconds, no I/O between): the mailbox writes
it alone before anything else (a FETCH, a wait, another ledger write, an exit).
"""
from __future__ import annotations

from typing import Any, Callable


class HeldProcessedRow:
    def __init__(self, store: Any, tenant_id: str, folder: str,
                 recorded: Callable[[int, str | None, float], None]) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.folder = folder
        self.recorded = recorded  # (uid, message_id, latency) once the row is durable
        self.combines = hasattr(store, "finish_then_begin")
        self._held: tuple[int, int, str | None, float] | None = None

    def hold(self, uidvalidity: int, uid: int, message_id: str | None, latency: float,
             defer: bool) -> None:
        """The handler of uid returned: write its row now, or (defer) with the next mark."""
        self._held = (uidvalidity, uid, message_id, latency)
        if not (defer and self.combines):
            self.write()

    def write(self) -> None:
        """Write the held row alone (before a fetch, a wait, an exit, any other write)."""
        if self._held is None:
            return
        uidvalidity, uid, message_id, latency = self._held
        self.store.mark_done(self.tenant_id, self.folder, uidvalidity, uid, message_id, "processed")
        self._held = None
        self.recorded(uid, message_id, latency)

    def begin_with(self, uidvalidity: int, uid: int) -> tuple[str | None, int] | None:
        """begin_attempt(uid) together with the held row, if there is one of this UIDVALIDITY
        and the store can; else the held row is written alone and None returned."""
        if self._held is None or self._held[0] != uidvalidity or not self.combines:
            self.write()
            return None
        _, done_uid, message_id, latency = self._held
        result = self.store.finish_then_begin(self.tenant_id, self.folder, uidvalidity,
                                              (done_uid, message_id, "processed"), uid)
        self._held = None
        self.recorded(done_uid, message_id, latency)
        return result
