#!/usr/bin/env bash
# Installs what the tests need (a .venv with the server, client and dev extras; buf and the
# Node.js client's packages from npm) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error
  if [ -f clients/node/package-lock.json ]; then
    (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

exec .venv/bin/python -m pytest "$@"
