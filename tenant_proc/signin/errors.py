"""Turn what a token endpoint or an IMAP server says about a token into one line for the operator.

Two outcomes only, as everywhere in the tenant: FatalError("auth", line) when the operator must
act (a revoked grant, a wrong secret, a missing permission: retrying cannot help, so the tenant
goes `failed` with the long backoff) and ConnectionLost when waiting may help (endpoint down,
throttled, timed out). Every line names the tenant and the provider and says what to do, and
passes through scrub() first: libraries (authlib, httpx) can echo request bodies in their errors.
"""
from __future__ import annotations

import re
from typing import Iterable

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.spec import Secret, TenantSpec

MAX_DESCRIPTION = 200  # an IdP's error_description is useful; its trace ids and timestamps are not
AADSTS_RE = re.compile(r"\b(AADSTS\d+)\b")
NOT_CONNECTED = "User is authenticated but not connected"

# OAuth "error" values (RFC 6749 5.2, Google, Microsoft) -> what the operator must do.
OAUTH_HINTS = {
    "invalid_client": "the client_id or client secret/certificate is wrong or expired: check "
                      "client_id and create a new client secret if it expired",
    "invalid_grant": "the grant is no longer valid (refresh token revoked or expired, consent "
                     "withdrawn, or the service account may not act for this mailbox): obtain a "
                     "new consent/refresh token or fix the delegation, then reload",
    "unauthorized_client": "the app may not use this grant: Google: authorise the service account's "
                           "client id for https://mail.google.com/ under domain-wide delegation; "
                           "Microsoft: grant IMAP.AccessAsApp with admin consent",
    "invalid_scope": "the scope is not granted to the app: check scope and the app's API permissions",
    "access_denied": "the grant was refused: an administrator must consent for the app",
    "invalid_request": "the token request was refused as malformed: check the [tenant.oauth] settings",
    "unsupported_grant_type": "the token endpoint does not accept this flow: check flow and token_url",
}
# Microsoft AADSTS codes worth a specific answer (the rest fall back to the OAuth error).
AADSTS_HINTS = {
    "AADSTS7000215": "the client secret is wrong: use the secret's value, not its id",
    "AADSTS7000222": "the client secret has expired: create a new one in the app registration",
    "AADSTS700016": "the app is not known in this directory: the customer's admin must consent "
                    "for it (the /adminconsent URL) or check tenant and client_id",
    "AADSTS90002": "the directory (tenant) does not exist: check tenant",
    "AADSTS65001": "no consent for the app: an administrator must grant consent",
    "AADSTS700082": "the refresh token expired after inactivity: the customer must consent again",
    "AADSTS70008": "the refresh token or code has expired: the customer must consent again",
    "AADSTS50173": "the refresh token was revoked (password change?): the customer must consent again",
    "AADSTS50076": "multi-factor authentication is required for this sign-in: use app-only "
                   "(client_credentials) or a conditional-access exception",
    "AADSTS53003": "blocked by conditional access: the customer's admin must allow the app",
    "AADSTS7000112": "the app is disabled in the customer's directory",
    "AADSTS700025": "the app is a public client (a \"Mobile and desktop\" registration, or a token "
                    "from the device flow): configure no client secret for this tenant",
    "AADSTS500011": "the resource principal is missing in the customer's directory: check scope",
}
# Errors that are a busy or broken server, not a bad grant.
TRANSIENT_OAUTH_ERRORS = {"temporarily_unavailable", "server_error", "slow_down"}
IMAP_TOKEN_HINTS = {
    "microsoft": "Microsoft: the app needs IMAP.AccessAsApp (app-only) or IMAP.AccessAsUser.All "
                 "(delegated) with admin consent, a service principal (New-ServicePrincipal) and "
                 "Add-MailboxPermission -AccessRights FullAccess for this mailbox",
    "google": "Google: the token must carry the https://mail.google.com/ scope and be for this "
              "mailbox (subject), and IMAP must be enabled for the user",
    "command": "check that the command prints a token for this mailbox and scope",
}


def scrub(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """text with every secret value (and anything shaped like a bearer token) replaced."""
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
    text = re.sub(r"(?i)((?:access|refresh)_token|client_secret|assertion|client_assertion)=[^&\s]+",
                  r"\1=***", text)
    return " ".join(text.split())


def who(spec: TenantSpec) -> str:
    provider = spec.oauth.provider if spec.oauth else "password"
    return f"tenant {spec.id}: {provider}"


def oauth_error(spec: TenantSpec, error: str, description: str | None,
                secrets: Iterable[Secret | str | None] = ()) -> Exception:
    """The exception for an OAuth error answer (`error`, `error_description`)."""
    description = scrub(description or "", secrets)
    if error in TRANSIENT_OAUTH_ERRORS:
        return ConnectionLost(f"{who(spec)} token endpoint busy: {error}"
                              + (f": {_clip(description)}" if description else ""))
    code = AADSTS_RE.search(description)
    hint = (AADSTS_HINTS.get(code.group(1)) if code else None) or OAUTH_HINTS.get(
        error, "see the identity provider's answer")
    detail = f" ({code.group(1)})" if code else ""
    summary = _first_sentence(description)
    if summary and not code:
        detail = f" ({summary})"
    return FatalError("auth", f"{who(spec)} sign-in failed: {_clip(error, 60)}{detail}: {hint}")


def token_refused(spec: TenantSpec, server_text: str) -> FatalError:
    """The IMAP server refused a freshly obtained token."""
    hint = IMAP_TOKEN_HINTS.get(spec.oauth.provider if spec.oauth else "", "")
    return FatalError("auth", f"{who(spec)} sign-in failed: token refused by the IMAP server "
                              f"{spec.host}:{spec.port} for {spec.username} ({_clip(server_text)})"
                              + (f": {hint}" if hint else ""))


class MailboxNotConnected(ConnectionLost):
    """Exchange accepted the login, then answered `BAD User is authenticated but not connected.`
    (on SELECT/EXAMINE or whatever command came next). Now and then it clears by itself (a SaaS
    with many connections, php-imap#464); when it persists on an OAuth tenant, the app lacks the
    mailbox permission or the service principal (imapflow#314, MailKit#1494): the session turns
    it into not_connected() after NotConnectedStreak (refusals.py) says it persists."""


def not_connected(spec: TenantSpec) -> FatalError:
    """Exchange's answer after a good token when the app may not open this mailbox."""
    return FatalError("auth", f"{who(spec)} sign-in failed: Exchange says '{NOT_CONNECTED}': the "
                              f"token is valid but the app has no access to {spec.username}: run "
                              "New-ServicePrincipal (with the Enterprise Application's object id) "
                              "and Add-MailboxPermission -AccessRights FullAccess for the mailbox")


def raise_if_mailbox_refused(spec: TenantSpec, exc: BaseException) -> None:
    """Called with the error of a command right after the login (SELECT/EXAMINE, STATUS, or the
    login's own answer): MailboxNotConnected when it is Exchange's "not connected"."""
    if NOT_CONNECTED.lower() in str(exc).lower():
        raise MailboxNotConnected(f"{who(spec)}: {spec.host} says '{NOT_CONNECTED}.' after the "
                                  "login (it passes by itself, or persists when the mailbox "
                                  "permission is missing)") from None


def _first_sentence(text: str) -> str:
    head = re.split(r"(?<=\.)\s|\s(?:Trace|Correlation) ID:", text, maxsplit=1)[0]
    return head.strip()


def _clip(text: str, limit: int = MAX_DESCRIPTION) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
