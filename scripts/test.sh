#!/usr/bin/env bash
# Every check switchboard's CI runs: format, lints, tests against real etcd, doc tests, docs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings

step "tests (real etcd on 127.0.0.1)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci
else
  echo "(cargo-nextest not found: using cargo test; 'cargo install cargo-nextest' for the faster runner)"
  cargo test -q --workspace --all-targets
fi

step "doc tests"
cargo test -q --workspace --doc

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --no-deps

step "fuzzing: every target for 10 s"
bash scripts/fuzz.sh 10

step "all checks passed"
