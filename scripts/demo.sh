#!/usr/bin/env bash
# The switchboard demo: real etcd, instances registering and leaving, `switchboard resolve --watch`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q -p switchboard-cli -p switchboard-examples
exec target/debug/demo
