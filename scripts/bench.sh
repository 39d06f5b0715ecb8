#!/usr/bin/env bash
# Every benchmark of issue #5 in one command; prints the figures that BENCHMARKS.md reports.
#
#   scripts/bench.sh                      # all of them (about 5 minutes on 2 cores)
#   scripts/bench.sh call_overhead        # only some: call_overhead harness_cost machine_cap
#                                         #            suite_scale downstream golden remote
#
# Needs: the Rust toolchain, cargo-nextest for the process-per-test figures, and crates.io
# for the testcontainers comparison (each is reported as NOT MEASURED when missing).
# Writes only under target/bench-results/ and $BENCH_SCRATCH (default
# ${TMPDIR:-/tmp}/downstream-bench: generated crates, their target dirs, fake smolvm state).
set -euo pipefail
cd "$(dirname "$0")/.."

all=(call_overhead harness_cost machine_cap suite_scale downstream golden remote)
if [ "$#" -gt 0 ]; then benches=("$@"); else benches=("${all[@]}"); fi
for b in "${benches[@]}"; do
  case " ${all[*]} " in
    *" $b "*) ;;
    *) echo "unknown bench: $b (one of: ${all[*]})" >&2; exit 2 ;;
  esac
done

# The benches set every smolvm and harness variable they need; inherited ones would only
# make the runs differ from machine to machine.
while IFS='=' read -r name _; do
  case "$name" in SMOLVM_*|NEXTEST_*) unset "$name" ;; esac
done < <(env)

export CARGO_TERM_COLOR=never
export BENCH_SCRATCH="${BENCH_SCRATCH:-${TMPDIR:-/tmp}/downstream-bench}"
out_dir="target/bench-results"
mkdir -p "$out_dir" "$BENCH_SCRATCH"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
export BENCH_RESULTS="$PWD/$out_dir/figures-$stamp.tsv"
log="$PWD/$out_dir/run-$stamp.log"
: >"$BENCH_RESULTS"

started=$SECONDS
{
  echo "== machine"
  echo "date: $(date)"
  echo "nproc: $(nproc)"
  free -h
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel: $(uname -srm)"
  rustc --version
  cargo --version
  cargo nextest --version 2>/dev/null | head -n1 || echo "cargo-nextest: not installed"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$log"

echo "== building the benches and the fake smolvm (not timed)" | tee -a "$log"
build_args=()
for b in "${benches[@]}"; do build_args+=(--bench "$b"); done
cargo bench --no-run "${build_args[@]}" >>"$log" 2>&1 || { tail -n 40 "$log"; exit 1; }

status=0
for b in "${benches[@]}"; do
  echo "== $b ($(date +%T))" | tee -a "$log"
  before=$(wc -l <"$log")
  if ! cargo bench --bench "$b" >>"$log" 2>&1; then
    status=1
    echo "!! $b failed; the end of its output:" >&2
    tail -n 40 "$log" >&2
  fi
  tail -n +"$((before + 1))" "$log" | grep '^FIGURE' | cut -c1-160 || true
done

echo
echo "== figures (met / MISS against the issue's targets; the rest is context)"
awk -F'\t' '{ printf "%-44s %12s %-4s %-9s %-4s\n", $1, $2, $3, $4, $5 }' "$BENCH_RESULTS"
echo
echo "== details"
awk -F'\t' '{ printf "%s: %s\n", $1, $6 }' "$BENCH_RESULTS"

# The same figures as a Markdown table, for BENCHMARKS.md.
md="$out_dir/figures-$stamp.md"
{
  echo "| figure | value | target | verdict | how measured |"
  echo "|---|---|---|---|---|"
  awk -F'\t' '{ gsub(/\|/, "\\|", $6); printf "| `%s` | %s %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }' "$BENCH_RESULTS"
} >"$md"

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
echo "total: $((SECONDS - started)) s; figures: $BENCH_RESULTS, $md; full log: $log"
exit "$status"
