#!/usr/bin/env bash
# Runs tokenwarden's whole test suite: unit, integration (real loopback HTTP, real
# redis-server processes, multi-process replicas), doc tests, and the examples and
# benchmarks compiled. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  echo "test.sh: redis-server is not installed; installing it from Debian's packages" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2
  fi
  command -v redis-server >/dev/null 2>&1 || {
    echo "test.sh: redis-server is required by the Redis tests and could not be installed" >&2
    exit 1
  }
}

need_redis
redis-server --version

# Examples and benchmarks must keep compiling.
cargo build --workspace --locked --all-features --examples --benches
# The tests start their own redis-server on free ports; the machine's 6379 is never used.
cargo test --workspace --locked --all-features --no-fail-fast
