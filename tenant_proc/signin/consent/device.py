"""The device flow (RFC 8628), Microsoft only: for a server with no browser and no port
forwarding. The person signs in on any device of theirs, at the verification URL, with the
user code shown here.

1. POST client_id and the consent scope (answer.py) to device_url.
2. Show the verification URL and the user code (the caller prints them on one line).
3. Poll token_url with grant_type=urn:ietf:params:oauth:grant-type:device_code, never sooner
   than `interval` after the last poll, 5 s more for this and every later poll after a
   `slow_down` (RFC 8628 3.5); `authorization_pending` means wait on; `authorization_declined`
   (Microsoft) or `access_denied` (RFC 8628), `expired_token` and any other error end it, as
   do --timeout and the code's own expires_in. A throttled or unreachable endpoint is asked
   again at the next interval, MAX_UNAVAILABLE times in a row at most.
4. The answer goes through the same account check as the browser flow's.

Google allows no device flow for mail scopes (https://mail.google.com/ is not among the scopes
of its flow for TVs and limited-input devices), so a Google tenant is refused before asking.
The device flow signs in a public client: Entra ID refuses a client secret with it and with the
refresh tokens it yields (AADSTS700025), so a tenant with a client_secret is refused too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from tenant_proc.signin.consent.answer import consent_from, consent_scope
from tenant_proc.signin.consent.endpoint import Refusal, Unavailable, post_form
from tenant_proc.signin.consent.outcome import Consent, ConsentError, shown
from tenant_proc.spec import Secret, TenantSpec

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5.0  # RFC 8628 3.5
DEFAULT_INTERVAL = 5.0  # RFC 8628 3.2, when the answer names none
MAX_INTERVAL = 60.0  # an endpoint asking for more is not waited on that long
DEFAULT_EXPIRES_IN = 900.0  # Microsoft's 15 minutes
MAX_UNAVAILABLE = 3
DECLINED = ("authorization_declined", "access_denied")


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: Secret
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> DeviceAuthorization:
        device_code = answer.get("device_code")
        user_code = answer.get("user_code")
        # RFC 8628 says verification_uri; Google's endpoint says verification_url.
        uri = answer.get("verification_uri") or answer.get("verification_url")
        if not (isinstance(device_code, str) and device_code and isinstance(user_code, str)
                and 0 < len(user_code) <= 64 and isinstance(uri, str) and len(uri) <= 512
                and urlsplit(uri).scheme in ("https", "http")):
            raise ConsentError("the device authorization endpoint's answer lacks device_code, "
                               "user_code or verification_uri: check device_url")
        return cls(Secret(device_code), shown(user_code, 64), shown(uri, 512),
                   _seconds(answer.get("expires_in"), DEFAULT_EXPIRES_IN, 1.0, 24 * 3600.0),
                   _seconds(answer.get("interval"), DEFAULT_INTERVAL, 1.0, MAX_INTERVAL))


def authorize_on_device(spec: TenantSpec, timeout: float, show: Callable[[str], None],
                        sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic) -> Consent:
    """Run the device flow; `show` gets the line with the URL and the code. Raises ConsentError."""
    oauth = spec.oauth
    assert oauth is not None
    if oauth.provider != "microsoft":
        raise ConsentError("Google allows no device flow for mail (https://mail.google.com/): run "
                           "authorize without --device and sign in with a browser on this machine "
                           "(or through an SSH tunnel to --port)")
    if oauth.client_secret is not None:
        raise ConsentError("the device flow signs in a public client, and Microsoft then refuses "
                           "the tenant's client secret (AADSTS700025): remove client_secret / "
                           "client_secret_env from the tenant, or use the browser flow")
    try:
        start = post_form(oauth, oauth.device_url, {"client_id": oauth.client_id,
                                                    "scope": consent_scope(oauth)})
    except Refusal as exc:
        raise ConsentError(f"the device authorization endpoint refused: {exc.describe()}") from None
    except Unavailable as exc:
        raise ConsentError(f"{exc}: run authorize again") from None
    device = DeviceAuthorization.from_answer(start)
    show(f"To sign in as {spec.username}, open {device.verification_uri} and enter the code "
         f"{device.user_code}")
    return _poll(spec, device, timeout, sleep, clock)


def _poll(spec: TenantSpec, device: DeviceAuthorization, timeout: float,
          sleep: Callable[[float], None], clock: Callable[[], float]) -> Consent:
    oauth = spec.oauth
    assert oauth is not None
    deadline = clock() + min(timeout, device.expires_in)
    interval = device.interval
    unavailable = 0
    form = {"grant_type": DEVICE_GRANT, "device_code": device.device_code.reveal(),
            "client_id": oauth.client_id}
    while True:
        if clock() + interval > deadline:
            if timeout <= device.expires_in:
                raise ConsentError(f"no sign-in within {timeout:g}s (--timeout): nothing stored")
            raise ConsentError(f"the code expired after {device.expires_in:g}s without a sign-in: "
                               "run authorize --device again")
        sleep(interval)
        try:
            answer = post_form(oauth, oauth.token_url, form, secrets=[device.device_code])
        except Unavailable as exc:
            unavailable += 1
            if unavailable >= MAX_UNAVAILABLE:
                raise ConsentError(f"{exc} ({unavailable} times in a row): nothing stored") from None
            continue
        except Refusal as exc:
            unavailable = 0
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval = min(interval + SLOW_DOWN_STEP, MAX_INTERVAL)
                continue
            if exc.error in DECLINED:
                raise ConsentError(f"the sign-in was declined on the device ({shown(exc.error, 60)}): "
                                   "nothing stored") from None
            if exc.error == "expired_token":
                raise ConsentError("the code expired before anyone signed in: run authorize "
                                   "--device again") from None
            raise ConsentError(f"the token endpoint refused: {exc.describe()}: nothing stored") from None
        return consent_from(spec, answer)


def _seconds(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())  # Entra ID's older endpoints send numbers as text
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return min(max(float(value), low), high)
