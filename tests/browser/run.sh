#!/usr/bin/env bash
# Browser end-to-end test: the inbox server driven from headless Chromium
# over gRPC-web, from a page on another origin (see run.mjs for the flow).
#
#   tests/browser/run.sh
#
# Installs what it needs on a machine with only the Rust toolchain and
# Node.js 20/npm: Debian's chromium (apt-get) when /usr/bin/chromium is
# missing, the client package @piqchat/inbox-client (clients/web: npm ci,
# buf generate, tsc), this folder's npm packages (npm ci), the bundle
# (esbuild) and the server's debug binary (cargo build). Set
# PIQCHAT_INBOX_BIN to test another binary instead of building one.
# On failure, screenshots and logs go to $BROWSER_TEST_ARTIFACTS (default: a
# new folder under $TMPDIR, printed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

# Debian's Chromium, unless CHROMIUM names another build.
if [ -z "${CHROMIUM:-}" ]; then
  CHROMIUM=/usr/bin/chromium
  if [ ! -x "$CHROMIUM" ]; then
    echo "== apt-get install chromium"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  fi
fi
export CHROMIUM

# The page uses the package as it is published: its built dist/.
echo "== clients/web: npm ci, buf generate, build"
(
  cd "$root/clients/web"
  npm ci --no-audit --no-fund --loglevel=error
  npm run -s generate
  npm run -s build
)

echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error

echo "== typecheck, bundle"
npm run -s typecheck
npm run -s build

if [ -z "${PIQCHAT_INBOX_BIN:-}" ]; then
  echo "== cargo build --bin piqchat-inbox"
  (cd "$root" && cargo build --locked --quiet --bin piqchat-inbox)
  export PIQCHAT_INBOX_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/piqchat-inbox"
fi

echo "== browser flow"
exec node run.mjs
