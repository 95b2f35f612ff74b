#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each: scripts/fuzz.sh [SECONDS]
# (20 s per target by default). Needs a nightly toolchain; installs cargo-fuzz when missing.
# New inputs go to fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET, libFuzzer's output to
# fuzz/logs/TARGET.log. Exits non-zero if any target found a crash, naming it and the input that
# reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]   (seconds per target, default 20)" >&2
  exit 2
fi

bash scripts/setup.sh
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: installing a nightly toolchain (cargo-fuzz needs one)"
  if ! rustup toolchain install nightly --profile minimal </dev/null; then
    # No nightly here: coverage-guided fuzzing is skipped, not failed, and the same fuzz bodies
    # run on stable over their seeds, mutations and random inputs (tests/fuzz_bodies.rs).
    echo "fuzz: no nightly toolchain and rustup could not install one: coverage-guided fuzzing skipped;"
    echo "      running the fuzz bodies on stable instead ('rustup toolchain install nightly' to fuzz)"
    exec cargo test -q -p switchboard-tests --test fuzz_bodies
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
mapfile -t targets < <(cargo +nightly fuzz list)
echo "fuzz: building ${#targets[@]} targets"
cargo +nightly fuzz build
failed=()
for target in "${targets[@]}"; do
  echo "fuzz: $target for ${seconds} s"
  mkdir -p "corpus/$target"
  # Seeds are read, new inputs land in corpus/; a per-input timeout catches hangs.
  # libFuzzer's progress lines go to logs/TARGET.log; its final stats are printed here.
  mkdir -p logs
  if cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    </dev/null >"logs/$target.log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^Done' "logs/$target.log" | sed 's/^/  /' || true
  else
    tail -n 40 "logs/$target.log" >&2
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs in fuzz/artifacts/ (reproduce: cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, no crash"
