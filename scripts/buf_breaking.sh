#!/usr/bin/env bash
# Fails when the protos break wire or source compatibility (buf's FILE rules) against a git ref,
# by default the previous commit: `scripts/buf_breaking.sh [REF]`.
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:-HEAD~1}"
if ! git rev-parse --verify --quiet "${base}^{commit}" >/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = "true" ]; then
    git fetch --quiet --deepen=1 2>/dev/null || true
  fi
fi
if ! git rev-parse --verify --quiet "${base}^{commit}" >/dev/null; then
  if [ "$(git rev-list --count HEAD)" = "1" ]; then
    echo "buf breaking: HEAD is the first commit; nothing to compare" >&2
    exit 0
  fi
  echo "buf breaking: git ref ${base} is not in this clone; fetch more history" >&2
  exit 1
fi
node_modules/.bin/buf breaking --against ".git#ref=$(git rev-parse "${base}")"
echo "== buf breaking passed against ${base}"
