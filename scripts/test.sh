#!/usr/bin/env bash
# The README's test command: installs what the tests need (scripts/install.sh), then runs the
# whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/python -m pytest "$@"
