"""Key material for the identity-provider stand-in (tests/servers/oauth/idp.py), and a token program.

* `generate_rsa_key()`: an RSA key pair as PEM, made with `cryptography`.
* `write_service_account_file()`: a Google-format service-account JSON key file
  (`type`, `project_id`, `private_key_id`, `private_key`, `client_email`, `client_id`,
  `token_uri`, ...) as the Google Cloud console downloads it.
* `python tests/servers/oauth/idp_keys.py print-token CREDENTIALS.json`: the `command` provider's program for
  tests. It asks the stand-in for an access token with client credentials and prints only the
  token. The credentials come from a file (never argv: the secrets test reads /proc/PID/cmdline).
"""
from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes  # PKCS#8, unencrypted, as in Google's key files
    public_pem: bytes   # SubjectPublicKeyInfo


def generate_rsa_key(bits: int = 2048) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(private_pem, public_pem)


def write_service_account_file(path: Path, client_email: str, token_uri: str, key: KeyPair,
                               project_id: str = "idle-supervisor-test") -> Path:
    """The JSON key file of a service account, mode 0600 as a secret should be."""
    document = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "0" * 40,
        "private_key": key.private_pem.decode(),
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)
    return path


def write_token_command_credentials(path: Path, token_url: str, client_id: str, client_secret: str,
                                    scope: str, ca_file: str | None = None) -> Path:
    """The file `print-token` reads (mode 0600)."""
    path.write_text(json.dumps({"token_url": token_url, "client_id": client_id,
                                "client_secret": client_secret, "scope": scope, "ca_file": ca_file}))
    path.chmod(0o600)
    return path


def print_token(credentials_file: str) -> int:
    creds = json.loads(Path(credentials_file).read_text())
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": creds["client_id"],
                                   "client_secret": creds["client_secret"], "scope": creds["scope"]})
    request = urllib.request.Request(creds["token_url"], data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    context = ssl.create_default_context(cafile=creds.get("ca_file") or None)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT, context=context) as answer:
            token = json.loads(answer.read())["access_token"]
    except urllib.error.HTTPError as exc:
        print(f"token endpoint answered HTTP {exc.code}", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "print-token":
        print("usage: python tests/servers/oauth/idp_keys.py print-token CREDENTIALS.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(print_token(sys.argv[2]))
