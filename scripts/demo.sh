#!/usr/bin/env bash
# The switchboard demo: real etcd, three user-rpc instances, the HTTP gateway, traffic through
# it; a fourth instance joins and one leaves gracefully, with no failed request.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q -p switchboard-cli -p switchboard-examples
exec target/debug/demo "$@"
