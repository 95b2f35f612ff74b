#!/usr/bin/env bash
# Checks that a test run killed with SIGKILL halfway leaves nothing behind: every process a test
# starts (etcd members, server processes, the Go peer, user-rpc, gateway, demo, Chromium) dies
# with the test that started it (testkit's child_command: setpriv --pdeathsig), and the
# temporary directories of a killed run (etcd data, certificates, configs, browser profiles) are
# removed by the next test that makes one (testkit's temp_dir).
#
#   bash scripts/kill-check.sh [SECONDS]   # kill the run after SECONDS (default 45)
set -euo pipefail
cd "$(dirname "$0")/.."
after="${1:-45}"
pattern='switchboard-etcd-|/test-server|switchboard-peer|/user-rpc|/gateway|/demo( |$)|chromium.*switchboard'

leftovers() { pgrep -af -- "$pattern" | grep -v -e pgrep -e kill-check || true; }
# Fails the check when LIST (lines of what was left) is not empty, saying WHAT it is.
fail_if_left() {
  local what="$1" list="$2"
  [ -z "$list" ] && return 0
  echo "kill-check: FAILED: $what left behind:" >&2
  echo "$list" >&2
  exit 1
}
if [ -n "$(leftovers)" ]; then
  echo "kill-check: processes of another run are about; stop them first:" >&2
  leftovers >&2
  exit 2
fi

echo "kill-check: building the tests"
cargo nextest run --workspace --profile ci --no-run >/dev/null 2>&1
mkdir -p target
echo "kill-check: running the suite, to be killed with SIGKILL after ${after} s"
setsid cargo nextest run --workspace --profile ci >target/kill-check.log 2>&1 &
leader=$!
sleep "$after"
# Kill it while a test has processes and a temporary directory of its own (an etcd member and
# its data at least), or the check proves nothing.
tmp="${TMPDIR:-/tmp}"
# Each temporary directory of the suite, with the test process that made it: DIR PID.
suite_dirs() {
  find "$tmp" -maxdepth 1 -type d -name 'switchboard-*-*-*' | while read -r dir; do
    pid=$(basename "$dir" | cut -d- -f3)
    case "$pid" in '' | *[!0-9]*) continue ;; esac
    echo "$dir $pid"
  done
}
owned_by_tests() {
  local tests
  tests=" $(pgrep -P "$leader" | tr '\n' ' ') "
  suite_dirs | while read -r dir pid; do
    case "$tests" in *" $pid "*) echo "$dir" ;; esac
  done
}
running=0
for _ in $(seq 1 1200); do
  running=$(pgrep -c -f -- "$pattern" || true)
  [ "$running" -gt 0 ] && pgrep -f -- 'switchboard-etcd-' >/dev/null && [ -n "$(owned_by_tests)" ] && break
  sleep 0.05
done
[ "$running" -gt 0 ] && [ -n "$(owned_by_tests)" ] \
  || { echo "kill-check: the run started no process and no directory to leave behind" >&2; exit 1; }
# nextest (cargo execs it: the leader) and every test process are killed; what the tests
# started is not signalled: it must die with them.
tests=$(pgrep -P "$leader" | tr '\n' ' ' || true)
echo "kill-check: $running processes started by $(echo "$tests" | wc -w) test processes; SIGKILL to nextest and the tests"
# shellcheck disable=SC2086
kill -KILL "$leader" $tests 2>/dev/null || true
wait "$leader" 2>/dev/null || true
# The killed test processes are gone once reaped; until then their directories look alive.
for _ in $(seq 1 100); do
  alive=0
  for pid in $tests; do [ -d "/proc/$pid" ] && alive=1; done
  [ "$alive" -eq 0 ] && break
  sleep 0.1
done
# Parent-death signals are delivered as each test process is reaped; give the kernel a moment.
for _ in $(seq 1 50); do
  [ -z "$(leftovers)" ] && break
  sleep 0.1
done
fail_if_left processes "$(leftovers)"
echo "kill-check: no process left behind"

# Every temporary directory of the suite is named switchboard-WHAT-PID-… after the test process
# that made it; the next test that makes one removes those whose process is gone.
dead_dirs() {
  suite_dirs | while read -r dir pid; do
    [ -d "/proc/$pid" ] || echo "$dir"
  done
}
stale=$(dead_dirs | wc -l)
[ "$stale" -gt 0 ] || { echo "kill-check: the killed tests left no directory to sweep" >&2; exit 1; }
cargo nextest run -p switchboard-tests --profile ci --test resolver_watch put_delete_stream_single_member >/dev/null 2>&1
fail_if_left "temporary directories" "$(dead_dirs)"
echo "kill-check: $stale temporary directories of the killed run, removed by the next run; none left"
echo "kill-check: passed"
