"""What a consent flow ends in: a Consent (the refresh token and the account that signed in) or
a ConsentError, one line for the operator that never holds a secret."""
from __future__ import annotations

from dataclasses import dataclass

from tenant_proc.spec import Secret

MAX_SHOWN = 200  # characters of a value an identity provider or a browser chose


class ConsentError(Exception):
    """The consent did not happen or was refused; nothing was stored."""


@dataclass(frozen=True)
class Consent:
    refresh_token: Secret
    account: str  # the address the ID token names: the tenant's username, checked


def shown(text: object, limit: int = MAX_SHOWN) -> str:
    """A value from the identity provider or the browser, fit for one terminal line: control
    characters (escape sequences, line breaks) replaced, cut at `limit` characters."""
    cleaned = "".join(c if c.isprintable() else "?" for c in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"
