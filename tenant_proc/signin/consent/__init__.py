"""The one-time consent of a `flow = "refresh_token"` tenant: `idle-supervisor authorize`
(supervisor/cli/authorize.py) runs it in the operator's shell; a tenant process never does
(nothing else in tenant_proc/ imports this package).

- browser.py: the authorization code grant with PKCE (RFC 7636, S256) and a loopback redirect
  (RFC 8252 7.3), for Microsoft and Google; pkce.py makes the verifier, challenge and state,
  loopback.py is the one-shot listener on 127.0.0.1 the browser comes back to.
- device.py: the device authorization grant (RFC 8628), Microsoft only.
- answer.py: what both flows end with: the scope asked for, and the token endpoint's answer
  turned into a Consent once id_token.py has shown the ID token names the tenant's mailbox.
- endpoint.py: one bounded form POST to the identity provider; outcome.py: Consent and
  ConsentError (one line for the operator, never a secret).
"""
