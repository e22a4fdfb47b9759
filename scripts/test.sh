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
# Test files run in parallel workers (one file stays on one worker, so its module fixtures are
# made once): most tests wait on servers and timers, not on the CPU. IDLE_SUPERVISOR_TEST_WORKERS=0
# runs them in this process, one after another.
workers="${IDLE_SUPERVISOR_TEST_WORKERS:-3}"
parallel=()
if [ "$workers" != 0 ]; then
    parallel=(-n "$workers" --dist loadfile)
fi
.venv/bin/python -m pytest -q --basetemp="$basetemp" --durations=15 "${parallel[@]}" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests (exit 5): treating as a failure" >&2
fi
exit "$rc"
