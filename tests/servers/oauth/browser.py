"""The person at the browser, for consent tests: opens the authorization URL `authorize` printed
at the identity-provider stand-in, "signs in" there (the stand-in consents for
`idp.consent.sign_in_as`, or declines), follows the redirect to the product's loopback listener
and reads the page it gets; or types a device code into the stand-in's verification page.

    visit = open_in_browser(url, ca_file=idp.ca_file if idp.tls else None)
    assert visit.page_status == 200 and "You can close this window" in visit.page
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

TIMEOUT = 30.0  # the listener answers after redeeming the code: a token request or so


@dataclass
class Visit:
    redirect: str      # where the stand-in sent the browser (the loopback redirect URI + answer)
    page_status: int   # the product's answer to that redirect
    page: str


def open_in_browser(url: str, ca_file: str | None = None,
                    tamper: Callable[[dict[str, str]], dict[str, str]] | None = None) -> Visit:
    """Follow one sign-in: the authorize endpoint's 302, then the loopback listener. `tamper`
    may change the redirect's parameters on the way (a forged or stale answer)."""
    with httpx.Client(follow_redirects=False, timeout=TIMEOUT, trust_env=False,
                      verify=ca_file or True) as client:
        answer = client.get(url)
        assert answer.status_code == 302, f"the authorize endpoint answered {answer.status_code}: {answer.text}"
        redirect = answer.headers["location"]
        if tamper is not None:
            parts = urlsplit(redirect)
            redirect = urlunsplit(parts._replace(query=urlencode(tamper(dict(parse_qsl(parts.query))))))
        page = client.get(redirect)
    return Visit(redirect, page.status_code, page.text)


def enter_device_code(verification_uri: str, user_code: str, account: str, decision: str = "approve",
                      ca_file: str | None = None) -> str:
    """Type the code into the verification page and sign in as `account` (or decline)."""
    answer = httpx.post(verification_uri, data={"user_code": user_code, "account": account,
                                                "decision": decision},
                        timeout=TIMEOUT, trust_env=False, verify=ca_file or True)
    assert answer.status_code == 200, answer.text
    return answer.text
