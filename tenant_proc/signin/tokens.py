"""The access token of one tenant process: cached, refreshed ahead of expiry, requests bounded.

- Before every login (the first connect and every reconnect) the cached token is refreshed when
  less than REFRESH_MARGIN seconds or REFRESH_FRACTION of its life is left; a token refused by
  the server that was not fetched for this very login is fetched again once (refetch()).
- At most TOKEN_REQUESTS_PER_HOUR requests per process: a revoked grant or a broken endpoint
  must never become a tight loop against the identity provider. Beyond the budget a still
  valid token is used; without one the tenant waits (ConnectionLost, "Suggested Backoff Time").
- Refresh-token flows: the refresh token in use comes from the state backend when it was
  stored for the same configured seed (storage.py), else from the config; a rotated one is
  stored before the old one is dropped.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.signin import errors
from tenant_proc.signin.providers import provider_for
from tenant_proc.signin.providers.base import Fetch, TokenResponse, uses_refresh_token
from tenant_proc.signin.storage import TokenStore, open_token_store, seed_hash
from tenant_proc.spec import Secret, TenantSpec
from tenant_proc.store.api import StoreError

REFRESH_MARGIN = 300.0  # seconds: refresh when less is left...
REFRESH_FRACTION = 0.2  # ...or less than this share of the token's lifetime
TOKEN_REQUESTS_PER_HOUR = 30
HOUR = 3600.0

log = logging.getLogger("tenant_proc.signin")


@dataclass(frozen=True)
class AccessToken:
    value: Secret
    obtained_at: float  # monotonic
    lifetime: float

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.lifetime

    def left(self, now: float) -> float:
        return self.expires_at - now

    def due(self, now: float) -> bool:
        """Time to refresh: less than 5 minutes or 20 % of its life left."""
        return self.left(now) < max(REFRESH_MARGIN, REFRESH_FRACTION * self.lifetime)


class RequestBudget:
    """At most `limit` events in any sliding `window` seconds."""

    def __init__(self, limit: int = TOKEN_REQUESTS_PER_HOUR, window: float = HOUR) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()

    def available(self, now: float) -> bool:
        self._expire(now)
        return len(self._times) < self.limit

    def spend(self, now: float) -> None:
        self._times.append(now)

    def next_free(self, now: float) -> float:
        """Seconds until the next request is allowed."""
        self._expire(now)
        return 0.0 if len(self._times) < self.limit else self._times[0] + self.window - now


class TokenSource:
    def __init__(
        self,
        spec: TenantSpec,
        fetch: Fetch | None = None,
        store: TokenStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        keepalive: Callable[[], None] = lambda: None,
        budget: RequestBudget | None = None,
    ) -> None:
        self.spec = spec
        self._fetch_token = fetch or provider_for(spec, keepalive)
        self._store = store
        self.clock = clock
        self._keepalive = keepalive
        self.budget = budget or RequestBudget()
        self.token: AccessToken | None = None
        self.fetched_now = False  # the token in hand was fetched for the current login
        self.requests = 0
        self._refresh: Secret | None = None
        self._refresh_loaded = False
        self._unsaved: Secret | None = None  # a rotated refresh token the store refused so far

    # -- for the login step ------------------------------------------------------------------

    def for_login(self) -> AccessToken:
        """The token to log in with now: the cached one unless it is due for refresh."""
        now = self.clock()
        self._retry_unsaved()
        token = self.token
        if token is not None and not token.due(now):
            self.fetched_now = False
            return token
        if token is not None and token.left(now) > 0 and not self.budget.available(now):
            self.fetched_now = False  # due, but within the budget only a valid token is left
            return token
        return self._request(now)

    def refetch(self) -> AccessToken | None:
        """After the server refused a token: a new one, or None if this one was just fetched
        (a new token would be refused the same way) or the budget is spent."""
        if self.fetched_now or not self.budget.available(self.clock()):
            return None
        self.token = None
        return self._request(self.clock())

    # -- requests ------------------------------------------------------------------------------

    def _request(self, now: float) -> AccessToken:
        refresh = self._refresh_token() if uses_refresh_token(self.spec) else None
        if uses_refresh_token(self.spec) and refresh is None:
            # Neither configured nor stored: nothing to ask the identity provider with, and
            # nothing a retry could change until someone signs in.
            raise FatalError("auth", f"{errors.who(self.spec)} sign-in failed: no refresh token yet: "
                                     f"run `idle-supervisor authorize {self.spec.id}` (or set "
                                     "refresh_token_env), then reload")
        if not self.budget.available(now):
            wait = self.budget.next_free(now)
            raise ConnectionLost(
                f"{errors.who(self.spec)} token requests limited to {self.budget.limit} per hour: "
                f"next in {wait:.0f}s (Suggested Backoff Time: {int(wait * 1000)} ms)")
        try:
            answer = self._ask(now, refresh)
        except FatalError:
            # Another process (`idle-supervisor check`, a restarted instance) may have rotated the
            # refresh token meanwhile, and the identity provider refuses the one we hold: try the
            # stored one, once, before calling the grant dead.
            newer = self._stored_if_newer(refresh)
            if newer is None or not self.budget.available(self.clock()):
                raise
            self._refresh = refresh = newer
            answer = self._ask(self.clock(), refresh)
        if answer.refresh_token is not None and answer.refresh_token != refresh:
            self._rotate(answer.refresh_token)
        self.token = AccessToken(answer.access_token, self.clock(), answer.lifetime)
        self.fetched_now = True
        return self.token

    def _ask(self, now: float, refresh: Secret | None) -> TokenResponse:
        self.budget.spend(now)
        self.requests += 1
        self._keepalive()
        try:
            return self._fetch_token(refresh)
        finally:
            self._keepalive()

    def _stored_if_newer(self, refresh: Secret | None) -> Secret | None:
        if refresh is None or self._unsaved is not None:
            return None
        try:
            stored = self.store().load(self.spec.id)
        except StoreError:
            return None
        configured = self.spec.oauth.refresh_token if self.spec.oauth else None
        if stored is None or stored.seed_hash != seed_hash(configured) or stored.refresh_token == refresh:
            return None
        return stored.refresh_token

    def _refresh_token(self) -> Secret | None:
        """The refresh token to use: stored (same seed) over configured, loaded once."""
        if not self._refresh_loaded:
            configured = self.spec.oauth.refresh_token if self.spec.oauth else None
            stored = None
            try:
                stored = self.store().load(self.spec.id)
            except StoreError as exc:
                raise ConnectionLost(f"{errors.who(self.spec)}: {exc}") from None
            use_stored = stored is not None and stored.seed_hash == seed_hash(configured)
            self._refresh = stored.refresh_token if use_stored and stored else configured
            self._refresh_loaded = True
        return self._refresh

    def _rotate(self, new: Secret) -> None:
        """Keep the new refresh token: in the store first, then drop the old one from memory.
        If the store refuses, the new one is used anyway (the old one may be dead now) and the
        write retried at every login until it lands."""
        self._unsaved = new
        self._retry_unsaved()
        self._refresh = new

    def _retry_unsaved(self) -> None:
        if self._unsaved is None:
            return
        seed = seed_hash(self.spec.oauth.refresh_token if self.spec.oauth else None)
        try:
            self.store().save(self.spec.id, self._unsaved, seed)
        except StoreError as exc:
            log.warning("%s: the rotated refresh token is not stored yet (retried at the next "
                        "login): %s", errors.who(self.spec), exc)
            return
        self._unsaved = None

    def store(self) -> TokenStore:
        if self._store is None:
            self._store = open_token_store(self.spec)
        return self._store
