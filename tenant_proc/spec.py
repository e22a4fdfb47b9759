"""What the supervisor hands to a tenant process: one frozen, comparable description.

The supervisor builds these from its config (file or Supabase); the tenant process only reads
them. Equality of two specs is what "unchanged" means on reload, so everything the child uses
lives in here and nothing else does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Security = Literal["tls", "starttls", "plain"]
Backfill = Literal["none", "unseen", "all"]
OnUidvalidityChange = Literal["reprocess_since_last", "skip_to_new"]

SECURITY_MODES: tuple[str, ...] = ("tls", "starttls", "plain")
AUTH_METHODS: tuple[str, ...] = ("password", "xoauth2", "oauthbearer")
BACKFILL_MODES: tuple[str, ...] = ("none", "unseen", "all")
UIDVALIDITY_MODES: tuple[str, ...] = ("reprocess_since_last", "skip_to_new")
# The values of an email's `auto` field (tenant_proc/message/classify.py decides them), and what
# `[imap] skip` may list: those plus "self" (the From address is the mailbox's own).
AUTO_CLASSES: tuple[str, ...] = ("bounce", "auto_reply", "auto_generated", "list", "bulk")
SKIP_CLASSES: tuple[str, ...] = (*AUTO_CLASSES, "self")


def boolean(value: Any) -> bool | None:
    """true/false, or their text in any case ("false" from an environment variable or a text
    column); None for anything else, which callers refuse, never guess: bool("false") is True,
    which once turned allow_insecure = "false" into plain-text IMAP. The one reading of a
    boolean for the config (supervisor/config/env.py strict_bool) and the handlers' options."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


class Secret:
    """A string that never prints itself.

    repr/str/format all give '***' so a secret that slips into a log line, an exception
    message or a status dump leaks nothing. Call reveal() at the one place it is needed.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # never pickled by accident into a queue, a log record or a file
        raise TypeError("Secret values are not picklable")

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class ImapSettings:
    """The [imap] table: how every tenant talks to its server."""

    idle_timeout: float = 1740.0  # re-issue IDLE before RFC 2177's 29 minutes
    poll_interval: float = 60.0  # when the server does not advertise IDLE
    backfill: Backfill = "none"  # first start without a checkpoint: none | unseen | all
    batch_size: int = 100  # UIDs fetched per FETCH round trip
    max_attempts: int = 5  # handler failures before an email is recorded as failed
    retry_interval: float = 30.0  # a failed handler call is retried this long after
    # Both stay below [supervisor] heartbeat_timeout (30 s): a child blocked this long in one
    # socket read sends no heartbeat, and must not be killed as hung for a merely slow server.
    connect_timeout: float = 20.0  # TCP connect + TLS handshake + greeting
    command_timeout: float = 25.0  # silence allowed within one IMAP command outside IDLE
    dead_after: float = 120.0  # no byte from the server while idling for this long: reconnect
    reconcile_interval: float = 300.0  # STATUS check that catches an EXISTS never sent
    reconnect_backoff_max: float = 60.0  # in-process reconnect: 1 s doubling up to this
    max_message_bytes: int = 25 * 1024 * 1024  # larger mail: headers and size only
    # A batch stops at batch_size UIDs or at this many bytes (RFC822.SIZE), whichever comes
    # first: batch_size large emails are neither one huge FETCH in memory nor one long read.
    max_batch_bytes: int = 8 * 1024 * 1024
    # Whatever the server does (refuses, throttles, kicks us), a tenant logs in at most this
    # often per sliding hour; 0 = no limit. Reconnects beyond it wait for the window.
    max_logins_per_hour: int = 60
    # The server renumbered the folder (migration, Exchange move): "reprocess_since_last" hands
    # over what arrived since the last email handled under the old UIDVALIDITY, skipping
    # Message-IDs already handled; "skip_to_new" starts at the new UIDNEXT (nothing old).
    on_uidvalidity_change: OnUidvalidityChange = "reprocess_since_last"
    # Seconds: an email whose Message-ID this tenant already handled this recently is recorded
    # `duplicate` and not handed over (Outlook add-ins re-upload mail under a new UID; Gmail
    # gives a message a new UID when a label comes back; a user drags mail out and back). On by
    # default, 7 days: answering the same email twice is the worst outcome after losing one.
    # Mail without a Message-ID is never deduplicated. 0 = off.
    dedupe_window: float = 7 * 24 * 3600.0
    # Seconds a UID the server lists (UID SEARCH) but never returns in a FETCH (Exchange does
    # this, for minutes or for good) is asked for again before it is recorded `failed`. Later
    # mail is handed over meanwhile (tenant_proc/mail/missing.py).
    missing_uid_timeout: float = 3600.0
    # Classes of mail (SKIP_CLASSES) never handed to the handler: recorded `skipped` with their
    # class instead. Empty by default: every email goes over, with its `auto` and `from_self`.
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class HandlerSpec:
    """The [handler] table: target plus every other key as options."""

    target: str = "tenant_proc.handlers:jsonl"
    options: tuple[tuple[str, Any], ...] = ()  # sorted items: hashable and comparable

    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class StateSpec:
    """Where checkpoints and the processed/failed ledger live."""

    backend: Literal["sqlite", "supabase"] = "sqlite"
    state_dir: str = "state"  # absolute after config load
    # Supabase backend only; read from the environment by the parent at load time.
    supabase_url: str = ""
    supabase_key: Secret | None = field(default=None, repr=False)
    # One Supabase request, as a whole; derived from [supervisor] heartbeat_timeout
    # (supervisor/config/timeouts.py) so that no request outlives it.
    request_timeout: float = 10.0


@dataclass(frozen=True)
class OAuthSpec:
    """The [tenant.oauth] table, validated and with defaults filled in (supervisor/tenants/oauth_rows.py).

    Secrets are Secret; files (service account key, certificate) are read by the tenant
    process at each token request, so a rotated key file needs no restart.
    """

    provider: str  # microsoft | google | command
    flow: str  # microsoft: client_credentials | refresh_token; google: service_account | refresh_token
    token_url: str = ""  # full URL of the token endpoint (unused by command)
    scope: str = ""
    tenant: str = ""  # microsoft: directory id or domain
    client_id: str = ""
    client_secret: Secret | None = field(default=None, repr=False)
    refresh_token: Secret | None = field(default=None, repr=False)  # the configured seed
    certificate_file: str | None = None  # microsoft: PEM with private key and certificate
    certificate: Secret | None = field(default=None, repr=False)  # the same, inline (Supabase)
    service_account_file: str | None = None  # google: the JSON key file
    service_account_json: Secret | None = field(default=None, repr=False)  # the same, inline
    subject: str = ""  # google service_account: the mailbox (default: the tenant's username)
    command: tuple[str, ...] = ()
    token_ca_file: str | None = None
    token_timeout: float = 10.0  # one token request or command run, as a whole; at most the request bound
    # `idle-supervisor authorize` only (the tenant process never uses them): the browser flow's
    # authorization endpoint and the device flow's device authorization endpoint.
    authorize_url: str = ""
    device_url: str = ""

    def label(self) -> str:
        return f"{self.provider} {self.flow}" if self.flow else self.provider


@dataclass(frozen=True)
class TenantSpec:
    """One company's mailbox and everything its process needs."""

    id: str
    name: str
    host: str
    port: int
    security: Security
    username: str
    password: Secret = field(repr=False)
    folder: str = "INBOX"
    ca_file: str | None = None
    allow_insecure: bool = False
    imap: ImapSettings = ImapSettings()
    handler: HandlerSpec = HandlerSpec()
    state: StateSpec = StateSpec()
    heartbeat_interval: float = 5.0
    idle_heartbeat_interval: float = 150.0  # while waiting on the server with nothing new
    shutdown_timeout: float = 10.0
    base_dir: str = "."  # directory of the config file: relative handler paths resolve here
    # [cluster]: the fencing token of this company's lease, sent with every state write so the
    # database refuses them once another instance claimed the company. None: not clustered.
    fencing_token: int | None = None
    auth: str = "password"  # password | xoauth2 | oauthbearer
    oauth: OAuthSpec | None = None  # set when auth is not "password"
    # The tenant's own webhook endpoint (tenant key / column webhook_url): replaces the
    # [handler] url option for this tenant only. None: the handler's url.
    webhook_url: str | None = None
    # The longest one request without a heartbeat inside it may take, as a whole (a webhook
    # attempt, a handler's request): derived from heartbeat_timeout (supervisor/config/timeouts.py).
    request_bound: float = 12.5
    # The mailbox's other addresses and aliases (tenant key / column `addresses`), lower case:
    # with username, what from_self compares the From address with.
    addresses: tuple[str, ...] = ()

    def own_addresses(self) -> tuple[str, ...]:
        return (self.username.strip().lower(), *self.addresses)

    def public_info(self) -> dict[str, Any]:
        """Tenant info safe to hand to handlers, logs and status: no secrets."""
        return {
            "id": self.id,
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "username": self.username,
            "folder": self.folder,
            "addresses": list(self.addresses),
        }
