#!/usr/bin/env bash
# The README's test command (and what .ci/run runs): set up what the tests need
# (Dovecot, PostgreSQL, the .venv), then the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --with-postgres
bash scripts/other-imap-servers.sh   # Cyrus + Courier in a private root (tests/imap/test_other_servers.py)
# A private basetemp: Dovecot's unprivileged users must traverse it, and concurrent
# pytest runs sharing /tmp/pytest-of-$USER would reset its mode under each other.
basetemp="$(mktemp -d /tmp/idle-supervisor-tests.XXXXXX)"
trap 'rm -rf "$basetemp"' EXIT
rc=0
.venv/bin/python -m pytest -q --basetemp="$basetemp" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests (exit 5): treating as a failure" >&2
fi
exit "$rc"
