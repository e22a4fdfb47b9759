#!/usr/bin/env bash
# The README's first command: set up what is missing, then run the live demo
# (local Dovecot, three demo companies, the supervisor on them, a few emails).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
