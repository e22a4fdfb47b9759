#!/usr/bin/env bash
# Prepare a machine for development and CI: system packages, then .venv.
# Idempotent and non-interactive: re-running only does what is still missing.
#
#   bash scripts/setup.sh                   # Dovecot + openssl + .venv
#   bash scripts/setup.sh --with-postgres   # ... plus PostgreSQL (for the Supabase tests)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repo root, whatever the caller's cwd

WITH_POSTGRES=0
for arg in "$@"; do
    case "$arg" in
        --with-postgres) WITH_POSTGRES=1 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "setup: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { echo "setup: $*"; }

# ------------------------------------------------------------------ system packages
# The tests run their own Dovecot (tests/servers/imap/dovecot.py) on free loopback ports, so a
# system-wide dovecot that apt may start is left alone: it cannot collide with them.

pick_python() {
    # First interpreter >= 3.11: PYTHON if given, else the newest python3.x on PATH.
    local candidate
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

missing_packages() {
    # systemd provides systemd-analyze (the unit's tests), procps /bin/kill (its ExecReload).
    local pkgs=(dovecot-core dovecot-imapd openssl systemd procps)
    if [ "$WITH_POSTGRES" = 1 ]; then pkgs+=(postgresql); fi
    # Debian's python3 ships venv/ensurepip separately.
    local py
    if py=$(pick_python) && ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
        pkgs+=("python3-venv")
    fi
    local pkg
    for pkg in "${pkgs[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            echo "$pkg"
        fi
    done
}

install_packages() {
    local -a missing sudo=()
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages: all present"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "setup: missing Debian packages: ${missing[*]}" >&2
            echo "setup: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
    fi
    log "installing: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    install_packages
else
    # Not Debian: we cannot install, only check and explain.
    for tool in dovecot doveadm openssl; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "setup: '$tool' not found; install Dovecot (imapd) and openssl" >&2; exit 1; }
    done
    log "no apt: found dovecot and openssl on PATH"
fi

# ------------------------------------------------------------------ virtualenv

PY=$(pick_python) || {
    echo "setup: Python >= 3.11 is required (found: $(python3 --version 2>&1 || echo none))." >&2
    echo "setup: install python3.11+ or point PYTHON=/path/to/python3.11 at one." >&2
    exit 1
}

if [ -x .venv/bin/python ] &&
   .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "venv: reusing .venv ($(.venv/bin/python --version))"
else
    rm -rf .venv   # absent, broken, or built from a too-old Python
    "$PY" -m venv .venv
    log "venv: created .venv with $("$PY" --version)"
fi

# Reinstall only when the dependency files changed (the package itself is
# installed editable, so code changes need nothing).
STAMP=.venv/.setup-stamp
dep_files=()
for f in setup.cfg pyproject.toml setup.py requirements-dev.txt; do
    [ -f "$f" ] && dep_files+=("$f")
done
digest=$(cat "${dep_files[@]}" | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ]; then
    log "python deps: up to date"
else
    if [ -f setup.cfg ] || [ -f pyproject.toml ] || [ -f setup.py ]; then
        .venv/bin/python -m pip install -q -e ".[dev]"
        log "python deps: installed -e .[dev]"
    fi
    # Test-only libraries (psycopg, supabase, ...) live here, not in the package extras.
    if [ -f requirements-dev.txt ]; then
        .venv/bin/python -m pip install -q -r requirements-dev.txt
        log "python deps: installed -r requirements-dev.txt"
    fi
    echo "$digest" > "$STAMP"
fi

log "done: $(dovecot --version 2>/dev/null | cut -d' ' -f1 | sed 's/^/dovecot /'), $(.venv/bin/python --version)"
