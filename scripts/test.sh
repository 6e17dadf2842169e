#!/usr/bin/env bash
# Runs tokenwarden's whole test suite: unit, integration (real loopback HTTP, real
# redis-server processes, multi-process replicas, oidc-provider interop), doc tests, the
# examples and benchmarks compiled, the examples run, and the dependency policy (deny.toml).
# Installs what it needs (redis-server, cargo-deny, the interop server's npm packages) when
# it is missing.
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

# cargo-deny, pinned: the version this workspace's deny.toml was written and checked with.
CARGO_DENY_VERSION=0.20.2
need_cargo_deny() {
  if command -v cargo-deny >/dev/null 2>&1 &&
    [ "$(cargo-deny --version | awk '{print $2}')" = "$CARGO_DENY_VERSION" ]; then
    return 0
  fi
  echo "test.sh: installing cargo-deny $CARGO_DENY_VERSION from crates.io (once; a few minutes)" >&2
  cargo install --locked "cargo-deny@$CARGO_DENY_VERSION" >&2 || {
    echo "test.sh: cargo-deny is required by the dependency policy check and could not be installed" >&2
    exit 1
  }
}

# The interop tests (tests/interop.rs) run oidc-provider with Node, pinned by
# tests/interop/package-lock.json. In CI (CI=true) a missing dependency fails, never skips.
need_interop() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
      echo "test.sh: node and npm are required by the interop tests (tests/interop.rs) and are not installed; install Node.js 18 or later" >&2
      exit 1
    fi
    echo "test.sh: WARNING: node/npm not found: the interop tests against oidc-provider will be SKIPPED (under CI=true they fail)" >&2
    return 0
  fi
  node --version
  [ -d tests/interop/node_modules ] && return 0
  echo "test.sh: installing the interop server's packages (npm ci --prefix tests/interop)" >&2
  if ! npm ci --prefix tests/interop --no-audit --no-fund >&2; then
    if [ "${CI:-}" = true ]; then
      echo "test.sh: the interop server's packages could not be installed (npm ci --prefix tests/interop)" >&2
      exit 1
    fi
    echo "test.sh: WARNING: the interop server's packages could not be installed: the interop tests will be SKIPPED (under CI=true they fail)" >&2
  fi
}

need_redis
redis-server --version
need_cargo_deny
need_interop

# The dependency policy in deny.toml: bans, licenses and sources. The fourth check,
# advisories, fetches the RustSec database from GitHub, which CI machines here cannot reach;
# run `cargo deny check advisories` where GitHub is reachable.
cargo deny --locked check bans licenses sources

# Examples and benchmarks must keep compiling.
cargo build --workspace --locked --all-features --examples --benches
# The examples need no outside service (redis_replicas starts its own redis-server) and check
# what they show: they must run, too.
for example in quickstart web_app middle_tier metrics_prometheus redis_replicas; do
  echo "test.sh: running example $example" >&2
  cargo run --locked --all-features --quiet --example "$example" >/dev/null
done
# The tests start their own redis-server on free ports; the machine's 6379 is never used.
cargo test --workspace --locked --all-features --no-fail-fast
