"""`idle-supervisor authorize TENANT_ID [--device] [--port PORT] [--timeout SECONDS]`: connect a
`flow = "refresh_token"` tenant's mailbox in one command.

The tenant is read exactly as `run` reads it (the same --config / environment, TOML or
Supabase), so the refresh token lands where the running supervisor looks: the tenant's state
backend (SQLite oauth_tokens in checkpoints.sqlite3, or Supabase's oauth_tokens), stored as a
rotated token is, under the hash of the configured refresh token (none: the empty seed), so it
wins over that configured one until the operator configures another. A running supervisor is
then asked to reload (control socket, else SIGHUP through the pid file): a tenant waiting in
`failed` signs in at once.

The flows live in tenant_proc/signin/consent/ (browser: authorization code + PKCE with a
loopback redirect; --device: RFC 8628, Microsoft only). Output: the instructions and the URL
(alone on its line) or the device line, then one line saying how it ended; every failure is one
line on stderr and exit 1. The code, the tokens, the client secret and the code verifier appear
nowhere: not in the output, a log, the process title or a command line (nothing is started).
"""
from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from supervisor.cli.args import PROG, load, tell_supervisor, with_config
from supervisor.errors import ConfigError, SourceError
from supervisor.tenants.sources import load_tenants
from tenant_proc.deps import MissingDependency
from tenant_proc.signin.consent.outcome import Consent, ConsentError
from tenant_proc.signin.storage import TABLE, open_token_store, seed_hash
from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import StoreError

DEFAULT_TIMEOUT = 300.0
PROVIDERS = ("microsoft", "google")


def add_authorize_command(sub: Any) -> None:
    authorize = sub.add_parser(
        "authorize", help="sign a refresh_token tenant's mailbox in once and store its refresh token",
        description="Get the refresh token of a [tenant.oauth] provider microsoft/google, flow "
                    "refresh_token tenant from the mailbox owner's consent, check it is the "
                    "tenant's account, store it and tell the running supervisor.")
    with_config(authorize)
    authorize.add_argument("tenant_id", metavar="TENANT_ID")
    authorize.add_argument("--device", action="store_true",
                           help="device flow (Microsoft only): sign in on any device with a code")
    authorize.add_argument("--port", type=int, default=0,
                           help="browser flow: the port on 127.0.0.1 the browser comes back to "
                                "(default: any free port)")
    authorize.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                           help=f"how long to wait for the sign-in (default {DEFAULT_TIMEOUT:g})")
    authorize.set_defaults(func=cmd_authorize)


def cmd_authorize(args: argparse.Namespace) -> int:
    try:
        if not 0 <= args.port <= 65535:
            raise ConsentError(f"--port must be from 0 to 65535, not {args.port}")
        if not 0 < args.timeout < float("inf"):
            raise ConsentError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
        _, config = load(args)
        spec = tenant_to_authorize(config, args.tenant_id)
        check_store(spec)
        consent = sign_in(spec, args)
        where = store(spec, consent)
    except (ConsentError, ConfigError, MissingDependency) as exc:
        print(f"{PROG}: authorize {args.tenant_id}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, and without its text, which could hold a secret
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"{PROG}: authorize {args.tenant_id}: unexpected {type(exc).__name__} at "
              f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}: nothing stored", file=sys.stderr)
        return 1
    told = _tell(Path(spec.state.state_dir))
    print(f"tenant {spec.id}: authorized as {consent.account}; refresh token stored in {where}; {told}")
    return 0


def tenant_to_authorize(config: Any, tenant_id: str) -> TenantSpec:
    """The tenant as `run` would build it, if it is one authorize can sign in."""
    try:
        tenants = load_tenants(config)
    except SourceError as exc:
        raise ConsentError(f"cannot read tenants: {exc}") from None
    if tenant_id in tenants.errors:
        raise ConsentError(f"tenant {tenant_id} has a config error: {tenants.errors[tenant_id][1]}")
    spec = tenants.specs.get(tenant_id)
    if spec is None:
        raise ConsentError(f"unknown tenant {tenant_id}")
    oauth = spec.oauth
    if oauth is None or oauth.provider not in PROVIDERS or oauth.flow != "refresh_token":
        how = "a password" if oauth is None else f"provider {oauth.label()}"
        raise ConsentError(f"tenant {tenant_id} signs in with {how}: authorize is for [tenant.oauth] "
                           "provider \"microsoft\" or \"google\" with flow \"refresh_token\"")
    return spec


def sign_in(spec: TenantSpec, args: argparse.Namespace) -> Consent:
    if args.device:
        from tenant_proc.signin.consent.device import authorize_on_device

        return authorize_on_device(spec, args.timeout, _say)
    from tenant_proc.signin.consent.browser import authorize_in_browser

    _say(f"Sign in as {spec.username} for tenant {spec.id} ({spec.name}) in a browser on this "
         f"machine within {args.timeout:g}s; open this URL:")
    return authorize_in_browser(spec, args.port, args.timeout, _say)


def check_store(spec: TenantSpec) -> None:
    """Before anyone signs in: the token store can be read here (a state_dir of another account,
    root's included, or an unreachable Supabase is said now, not after the consent)."""
    try:
        open_token_store(spec).load(spec.id)
    except StoreError as exc:
        raise ConsentError(f"the token store cannot be used, so nobody was asked to sign in: "
                           f"{exc}") from None


def store(spec: TenantSpec, consent: Consent) -> str:
    """Keep the refresh token where rotated ones go; says where."""
    assert spec.oauth is not None
    try:
        open_token_store(spec).save(spec.id, consent.refresh_token, seed_hash(spec.oauth.refresh_token))
    except StoreError as exc:
        raise ConsentError(f"signed in as {consent.account}, but the refresh token could not be "
                           f"stored: {exc}") from None
    if spec.state.backend == "supabase":
        return f"Supabase ({TABLE})"
    from tenant_proc.store.sqlite import DB_NAME

    return f"{Path(spec.state.state_dir) / DB_NAME} ({TABLE})"


def _tell(state_dir: Path) -> str:
    """Ask a running supervisor to reload; what happened, as the end of the final line."""
    try:
        told = tell_supervisor(state_dir, "reload", signal.SIGHUP)
    except OSError as exc:
        return f"the supervisor could not be told ({exc.strerror or exc}): run `{PROG} reload`"
    if told is None:
        return f"no supervisor is running with state_dir {state_dir}: its next start signs in"
    return told[1]


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: whoever reads a pipe needs the URL before we wait
