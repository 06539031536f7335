#!/usr/bin/env bash
# Proves the protos serve a language other than Python: generates TypeScript from protos/ with the
# committed buf.gen.yaml (ts-proto, @grpc/grpc-js clients) into clients/typescript/src/gen and
# compiles it, with the example program that uses it, under strict tsc into
# clients/typescript/dist (both git-ignored). Installs buf and the TypeScript toolchain from their
# package-lock.json files when they are missing or older than the lock; needs node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

# npm ci in $1 unless its node_modules already matches its package-lock.json.
install_locked() {
  local dir="$1"
  if [ ! -f "$dir/node_modules/.package-lock.json" ] \
    || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

install_locked .
install_locked clients/typescript
node_modules/.bin/buf generate
(cd clients/typescript && node_modules/.bin/tsc -p .)
echo "== TypeScript stubs generated from protos/ and compiled (tsc $(clients/typescript/node_modules/.bin/tsc --version | cut -d' ' -f2), strict)"
