"""`idle-supervisor authorize` driven as an operator drives it (`python -m supervisor authorize`,
the console script's entry) against the identity-provider stand-in, with tests/servers/oauth/
browser.py as the person at the browser: the browser flow for each kind of app, the wrong
account, a wrong state, a declined consent, the device flow's pending, slow_down, declined,
expiry and --timeout, and every refusal before a sign-in, each one line and exit 1. With a
supervisor running, and with Supabase: tests/signin/test_authorize_e2e.py."""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tenant_proc.signin.storage import SqliteTokenStore, seed_hash
from tenant_proc.spec import Secret
from tests.harness.oauth_tenants import ConsentTenant, consent_tenant, start_authorize
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.oauth.browser import enter_device_code, open_in_browser
from tests.servers.oauth.idp import IdentityProvider

pytestmark = pytest.mark.integration

MAILBOX = "contoso@contoso.example"
DEVICE_LINE = re.compile(r"To sign in as (\S+), open (\S+) and enter the code (\S+)")


def cli_run(tmp_path: Path, tenants: list[ConsentTenant], extra: list[TenantEntry] = ()) -> SupervisorRun:  # type: ignore[assignment]
    env = {k: v for t in tenants for k, v in t.env.items()}
    return SupervisorRun(tmp_path / "run", None, [t.entry for t in tenants] + list(extra), extra_env=env)


def stored(run: SupervisorRun, tid: str = "contoso") -> str | None:
    path = run.state_dir / "checkpoints.sqlite3"
    token = SqliteTokenStore(path).load(tid) if path.exists() else None
    return token.refresh_token.reveal() if token else None


def assert_no_secret(idp: IdentityProvider, *texts: str, more: tuple[str, ...] = ()) -> None:
    for secret in [*idp.issued_secrets(), *more]:
        for text in texts:
            assert secret not in text, f"a secret ({secret[:8]}...) in the output"


@pytest.mark.parametrize("kind", ["microsoft public client", "microsoft web app with a secret", "google"])
def test_the_browser_flow_stores_the_refresh_token_where_the_tenant_reads_it(
        idp: IdentityProvider, tmp_path: Path, kind: str) -> None:
    provider = kind.split()[0]
    secret = "cs-for-the-exchange" if "secret" in kind or provider == "google" else None
    tenant = consent_tenant(idp, "contoso", provider, client_secret=secret, port=993)
    run = cli_run(tmp_path, [tenant])
    with start_authorize(run, "contoso") as authorize:
        url = authorize.url()
        visit = open_in_browser(url)
        code, out, err = authorize.finish()
    assert (code, err) == (0, ""), out
    assert visit.page_status == 200
    assert visit.page == f"Signed in as {MAILBOX} for contoso AB. You can close this window.\n"
    lines = out.splitlines()
    assert url in lines  # the URL alone on its line
    assert lines[-1] == (f"tenant contoso: authorized as {MAILBOX}; refresh token stored in "
                         f"{run.state_dir}/checkpoints.sqlite3 (oauth_tokens); no supervisor is running "
                         f"with state_dir {run.state_dir}: its next start signs in")
    request = idp.consent.authorize_requests[-1]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", request["redirect_uri"])
    assert request["login_hint"] == MAILBOX and request["code_challenge_method"] == "S256"
    assert request["response_type"] == "code" and request["client_id"] == "contoso-desktop"
    extras = {"openid", "email"} | ({"offline_access", "profile"} if provider == "microsoft" else set())
    assert extras <= set(request["scope"].split())
    if provider == "google":
        assert (request["access_type"], request["prompt"]) == ("offline", "consent")
    # Stored as a rotated token is, under the (empty) configured seed: the tenant will use it.
    grant = idp.consent.grants[-1]
    assert stored(run) == grant.refresh_token and idp.refresh_token_valid(grant.refresh_token)
    token = SqliteTokenStore(run.state_dir / "checkpoints.sqlite3").load("contoso")
    assert token is not None and token.seed_hash == seed_hash(None)
    assert_no_secret(idp, out, err, visit.page, more=tuple(tenant.env.values()))


def test_the_wrong_account_is_refused_naming_both_and_nothing_is_stored(
        idp: IdentityProvider, tmp_path: Path) -> None:
    tenant = consent_tenant(idp, "contoso", port=993)
    run = cli_run(tmp_path, [tenant])
    SqliteTokenStore(run.state_dir / "checkpoints.sqlite3").save("contoso", Secret("rt-from-before"),
                                                                seed_hash(None))
    idp.consent.sign_in_as = "me@personal.example"
    with start_authorize(run, "contoso") as authorize:
        visit = open_in_browser(authorize.url())
        code, out, err = authorize.finish()
    line = (f"signed in as me@personal.example, but tenant contoso's mailbox is {MAILBOX}: nothing "
            f"stored; sign in again as {MAILBOX}")
    assert (code, err) == (1, f"idle-supervisor: authorize contoso: {line}\n")
    assert visit.page_status == 400 and line in visit.page
    assert stored(run) == "rt-from-before"  # untouched
    assert_no_secret(idp, out, err, visit.page)


def test_a_wrong_state_is_refused_and_the_code_never_redeemed(idp: IdentityProvider, tmp_path: Path) -> None:
    run = cli_run(tmp_path, [consent_tenant(idp, "contoso", port=993)])
    with start_authorize(run, "contoso") as authorize:
        visit = open_in_browser(authorize.url(), tamper=lambda answer: {**answer, "state": "forged"})
        code, out, err = authorize.finish()
    assert code == 1 and err.count("\n") == 1
    assert "the answer's state does not match this sign-in" in err and "nothing stored" in err
    assert visit.page_status == 400 and "state does not match" in visit.page
    assert idp.by_grant_type["authorization_code"] == 0 and stored(run) is None
    assert_no_secret(idp, out, err)


def test_a_declined_consent_and_a_refused_code_are_one_line_each(idp: IdentityProvider, tmp_path: Path) -> None:
    tenant = consent_tenant(idp, "contoso", client_secret="the-right-secret", port=993)
    run = cli_run(tmp_path, [tenant])
    idp.consent.decline = True
    with start_authorize(run, "contoso") as authorize:
        open_in_browser(authorize.url())
        assert authorize.finish()[0::2] == (1, "idle-supervisor: authorize contoso: the sign-in was "
                                               "declined (access_denied: The user declined to consent.): "
                                               "nothing stored\n")
    idp.consent.decline = False
    run.extra_env = {name: "a-wrong-secret" for name in tenant.env}
    with start_authorize(run, "contoso") as authorize:
        open_in_browser(authorize.url())
        code, out, err = authorize.finish()
    assert (code, err) == (1, "idle-supervisor: authorize contoso: the token endpoint refused the code: "
                              "invalid_client (AADSTS7000215): nothing stored\n")
    assert_no_secret(idp, out, err, more=("a-wrong-secret",))


@pytest.mark.slow
def test_the_device_flow_waits_through_pending_and_slow_down(idp: IdentityProvider, tmp_path: Path) -> None:
    run = cli_run(tmp_path, [consent_tenant(idp, "contoso", port=993)])
    idp.consent.device_interval = 1
    with start_authorize(run, "contoso", "--device") as authorize:
        account, uri, user_code = DEVICE_LINE.fullmatch(authorize.wait_line(DEVICE_LINE.match)).groups()  # type: ignore[union-attr]
        assert account == MAILBOX
        request = idp.consent.device_requests[-1]
        wait_until(lambda: len(request.polls) >= 2, 10)  # two authorization_pending answers
        idp.consent.forced_slow_downs = 1                # the third poll is told to slow down
        wait_until(lambda: len(request.polls) >= 3, 10)
        enter_device_code(uri, user_code, MAILBOX)
        code, out, err = authorize.finish(60)
    assert (code, err) == (0, ""), out
    gaps = [b - a for a, b in zip(request.polls, request.polls[1:])]
    assert len(gaps) == 3 and min(gaps[:2]) >= 0.95 and gaps[2] >= 5.95, gaps  # interval, then +5 s
    assert out.splitlines()[-1].startswith(f"tenant contoso: authorized as {MAILBOX}; refresh token stored")
    assert stored(run) == idp.consent.grants[-1].refresh_token and request.state == "redeemed"
    assert_no_secret(idp, out, err)


def test_the_device_flow_ends_on_declined_expiry_and_timeout(idp: IdentityProvider, tmp_path: Path) -> None:
    run = cli_run(tmp_path, [consent_tenant(idp, "contoso", port=993)])
    idp.consent.device_interval = 1
    with start_authorize(run, "contoso", "--device") as authorize:
        _, uri, user_code = DEVICE_LINE.fullmatch(authorize.wait_line(DEVICE_LINE.match)).groups()  # type: ignore[union-attr]
        enter_device_code(uri, user_code, MAILBOX, decision="decline")
        assert authorize.finish()[0::2] == (1, "idle-supervisor: authorize contoso: the sign-in was "
                                               "declined on the device (authorization_declined): nothing stored\n")
    idp.consent.device_lifetime = 2
    with start_authorize(run, "contoso", "--device") as authorize:
        code, _, err = authorize.finish()
        assert code == 1 and "the code expired" in err and err.count("\n") == 1
    idp.consent.device_lifetime = 900
    with start_authorize(run, "contoso", "--device", "--timeout", "1.5") as authorize:
        assert authorize.finish()[0::2] == (1, "idle-supervisor: authorize contoso: no sign-in within "
                                               "1.5s (--timeout): nothing stored\n")
    assert stored(run) is None


def test_every_refusal_before_a_sign_in_is_one_line_and_exit_1(idp: IdentityProvider, tmp_path: Path) -> None:
    web = consent_tenant(idp, "web", client_secret="s", port=993)
    google = consent_tenant(idp, "google", "google", client_secret="g", port=993)
    broken = consent_tenant(idp, "broken", "google", port=993)  # Google without a client secret
    password = TenantEntry("pw", "pw@contoso.example", "pw-secret", port=993, ca_file=None)
    app_only = TenantEntry("apponly", "a@contoso.example", "", port=993, ca_file=None, auth="xoauth2",
                           oauth={"provider": "microsoft", "tenant": "t", "client_id": "c", "client_secret": "s"})
    run = cli_run(tmp_path, [web, google, broken], [password, app_only])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        cases = {
            ("nobody",): "unknown tenant nobody",
            ("pw",): "tenant pw signs in with a password: authorize is for [tenant.oauth] provider "
                     "\"microsoft\" or \"google\" with flow \"refresh_token\"",
            ("apponly",): "tenant apponly signs in with provider microsoft client_credentials: authorize "
                          "is for [tenant.oauth] provider \"microsoft\" or \"google\" with flow \"refresh_token\"",
            ("broken",): "tenant broken has a config error: oauth google refresh_token needs "
                         "client_secret_env (or client_secret)",
            ("google", "--device"): "Google allows no device flow for mail (https://mail.google.com/): run "
                                    "authorize without --device and sign in with a browser on this machine "
                                    "(or through an SSH tunnel to --port)",
            ("web", "--device"): "the device flow signs in a public client, and Microsoft then refuses the "
                                 "tenant's client secret (AADSTS700025): remove client_secret / "
                                 "client_secret_env from the tenant, or use the browser flow",
            ("web", "--port", port): f"port {port} on 127.0.0.1 is in use: choose another --port (or leave "
                                     "--port out for any free port)",
            ("web", "--timeout", "0"): "--timeout must be a positive number of seconds, not 0",
            ("web", "--port", "70000"): "--port must be from 0 to 65535, not 70000",
            ("web", "--timeout", "1"): "no answer from the browser within 1s (--timeout): nothing stored",
        }
        for args, line in cases.items():
            result = run.cli("authorize", *args)
            assert (result.returncode, result.stderr) == (1, f"idle-supervisor: authorize {args[0]}: {line}\n"), args
    assert idp.token_requests() == 0 and stored(run, "web") is None



def test_a_token_store_that_cannot_be_used_is_said_before_anyone_signs_in(
        idp: IdentityProvider, tmp_path: Path) -> None:
    """A state_dir the store refuses (here a link planted at the database; as root, another
    account's directory) would lose the consent after the person signed in: say it first."""
    tenant = consent_tenant(idp, "contoso", "microsoft", port=993)
    run = cli_run(tmp_path, [tenant])
    run.state_dir.mkdir(parents=True, mode=0o700)
    target = tmp_path / "elsewhere.sqlite3"
    (run.state_dir / "checkpoints.sqlite3").symlink_to(target)
    result = run.cli("authorize", "contoso", "--timeout", "5")
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("idle-supervisor: authorize contoso: the token store cannot be "
                                    "used, so nobody was asked to sign in: "), result.stderr
    assert "symbolic link" in result.stderr and result.stderr.count("\n") == 1
    assert "http" not in result.stdout  # no authorization URL was printed
    assert idp.token_requests() == 0 and not target.exists()

def wait_until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_bug_is_still_one_line_without_its_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from supervisor.cli import authorize, main

    def broken(config: object, tenant_id: str) -> None:
        raise RuntimeError("text that could quote a secret")

    monkeypatch.setattr(authorize, "tenant_to_authorize", broken)
    config = tmp_path / "config.toml"
    config.write_text(f'[supervisor]\nstate_dir = "{tmp_path / "state"}"\n')
    assert main(["authorize", "contoso", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"idle-supervisor: authorize contoso: unexpected RuntimeError at "
                        r"test_authorize\.py:\d+ in broken: nothing stored\n", err), err
    assert "secret" not in err
