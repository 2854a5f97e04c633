#!/usr/bin/env bash
# The TypeScript client package: install, generate, typecheck, build, test.
#
#   clients/web/run.sh
#
# Needs Node.js 20+ and npm. The tests include one against the real server
# binary (PIQCHAT_INBOX_BIN, else target/debug/piqchat-inbox); without it
# that test is skipped with a message, everything else still runs.
set -euo pipefail
cd "$(dirname "$0")"

echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error

echo "== buf generate, typecheck, build"
npm run -s generate
npm run -s typecheck
npm run -s build

echo "== node --test"
npm test
