#!/usr/bin/env bash
# Installs what development and the tests need: a .venv with the server, client and dev extras
# (the CPU build of torch where that is the right choice, see scripts/pip_torch_args.sh), and from
# npm buf, the Node.js client's packages and the TypeScript toolchain. Safe to re-run: it only
# adds what is missing.
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
  # The TypeScript toolchain (scripts/check_typescript.sh): only when missing or older than its
  # lock, since it is the largest of the three.
  if [ ! -f clients/typescript/node_modules/.package-lock.json ] \
    || [ clients/typescript/package-lock.json -nt clients/typescript/node_modules/.package-lock.json ]; then
    (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
