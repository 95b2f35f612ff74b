#!/usr/bin/env bash
# Every check switchboard's CI runs: format, lints, tests against real etcd, doc tests, docs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser --go
# A one-shot run on a clean clone gains nothing from incremental caches (3 GB of disk).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings

step "Go conformance peer (grpc-go $(sed -n 's/^const Version = "\(.*\)"/\1/p' /usr/share/gocode/src/google.golang.org/grpc/version.go), etcd 3.4 naming; GOPATH mode)"
# Where the tests look for it (testkit's go_peer.rs): go/ in the cargo target directory.
gotarget="$(realpath -m "${CARGO_TARGET_DIR:-target}")/go"
mkdir -p "$gotarget"
gobuild() {
  (cd conformance/go/switchboard-peer \
    && GOPATH="/usr/share/gocode${GOPATH:+:$GOPATH}" GO111MODULE=off GOFLAGS= GOCACHE="$gotarget/cache" go "$@")
}
gobuild vet .
gobuild build -o "$gotarget/switchboard-peer" .
test -z "$(gofmt -l conformance)" || { echo "gofmt: $(gofmt -l conformance) not formatted" >&2; exit 1; }

step "tests (real etcd on 127.0.0.1)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci
else
  echo "(cargo-nextest not found: using cargo test; 'cargo install cargo-nextest' for the faster runner)"
  # One test at a time: the leak checks count descriptors and tasks of the whole process.
  cargo test -q --workspace --all-targets -- --test-threads=1
fi

step "the docker-compose cluster, run (skipped where no Docker engine answers)"
# Builds the examples image (Docker's cache makes an unchanged tree quick) and takes the cluster
# through its faults; without a Docker engine or a compose tool the test says so and passes.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p switchboard-examples --test compose_cluster --run-ignored only --no-capture
else
  cargo test -q -p switchboard-examples --test compose_cluster -- --ignored --nocapture
fi

step "doc tests"
cargo test -q --workspace --doc

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --no-deps

step "fuzzing: every target for 10 s"
bash scripts/fuzz.sh 10

step "all checks passed"
