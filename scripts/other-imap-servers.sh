#!/usr/bin/env bash
# Cyrus IMAP 3.6 and Courier IMAP 5.0 for the integration tests (tests/servers/imap/cyrus.py, tests/servers/imap/courier.py).
#
# Both Debian packages conflict with dovecot-imapd (all provide imap-server): installing them
# would remove Dovecot. So the server packages are fetched with `apt-get download` and unpacked
# with `dpkg -x` into a private root; only their plain library dependencies are installed with
# apt-get (never upgrading or removing anything already installed). The tests run each server
# from the private root inside its own mount namespace (see tests/servers/imap/altserver.py).
#
# Idempotent and non-interactive; installing needs root (and the tests need it for unshare --mount).
#   bash scripts/other-imap-servers.sh          # root: $IMAP_SERVERS_ROOT or the default below
set -euo pipefail

ROOT="${IMAP_SERVERS_ROOT:-/opt/idle-supervisor-imap-servers}"
log() { echo "other-imap-servers: $*"; }

# The server packages themselves, and the parts of their dependency chains that are not plain
# libraries (daemons and tools whose maintainer scripts would add users, services or an MTA).
SERVER_DEBS=(cyrus-imapd cyrus-common sasl2-bin
             courier-imap courier-base courier-authdaemon courier-authlib courier-authlib-userdb)
# Shared libraries the unpacked binaries link against (checked with ldd) plus gamin, whose
# gam_server gives Courier real-time IDLE. None of them conflicts with Dovecot.
LIBRARIES=(libclamav12 libical3 libicu72 libjansson4 libxapian30 libzephyr4 libwrap0 libpcre3
           libsasl2-2 libsasl2-modules-db libcourier-unicode4 libgdbm6 libidn12 libltdl7
           libgnutls30 libgamin0 gamin perl)

need_root() {  # only what changes the machine needs root; an up-to-date machine passes as anyone
    if [ "$(id -u)" -ne 0 ]; then
        echo "other-imap-servers: $1 needs root (the tests also need root for unshare --mount)" >&2
        exit 1
    fi
}

wanted="${SERVER_DEBS[*]} $(uname -m)"
if [ -f "$ROOT/.stamp" ] && [ "$(cat "$ROOT/.stamp")" = "$wanted" ] &&
   [ -x "$ROOT/usr/lib/cyrus/bin/master" ] && [ -x "$ROOT/usr/sbin/couriertcpd" ]; then
    log "private root: up to date in $ROOT"
else
    need_root "unpacking the servers into $ROOT"
    log "fetching ${SERVER_DEBS[*]}"
    download="$(mktemp -d /tmp/other-imap-servers.XXXXXX)"
    trap 'rm -rf "$download"' EXIT
    chmod 755 "$download"   # apt's _apt user writes the downloads
    apt-get update -qq
    (cd "$download" && apt-get download -qq "${SERVER_DEBS[@]}")
    rm -rf "$ROOT.new"
    mkdir -p "$ROOT.new"
    for deb in "$download"/*.deb; do
        dpkg -x "$deb" "$ROOT.new"
    done
    echo "$wanted" > "$ROOT.new/.stamp"
    rm -rf "$ROOT"
    mv "$ROOT.new" "$ROOT"   # a half-unpacked root is never left under the real name
    log "private root: unpacked into $ROOT"
fi

missing=()
for pkg in "${LIBRARIES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    need_root "installing ${missing[*]}"
    log "installing libraries: ${missing[*]}"
    # Refuse anything that would remove a package (Dovecot above all).
    if apt-get -s install --no-install-recommends --no-upgrade "${missing[@]}" | grep -q '^Remv'; then
        echo "other-imap-servers: installing ${missing[*]} would remove packages; refusing" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade \
        "${missing[@]}" >/dev/null
fi

# Every unpacked binary the tests run must find its libraries (private ones via the root).
libpath="$ROOT/usr/lib:$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/usr/lib/courier-authlib"
for bin in usr/lib/cyrus/bin/master usr/lib/cyrus/bin/imapd usr/lib/cyrus/bin/idled \
           usr/sbin/saslpasswd2 usr/sbin/couriertcpd usr/bin/couriertls usr/bin/imapd \
           usr/lib/courier/courier/imaplogin usr/lib/courier/courier-authlib/authdaemond; do
    if LD_LIBRARY_PATH="$libpath" ldd "$ROOT/$bin" | grep -q 'not found'; then
        echo "other-imap-servers: $bin lacks libraries:" >&2
        LD_LIBRARY_PATH="$libpath" ldd "$ROOT/$bin" | grep 'not found' >&2
        exit 1
    fi
done
log "done: Cyrus and Courier ready in $ROOT"
