#!/usr/bin/env bash
# Training-step time on an idle machine and beside one busy process (`yes`, one core), for
# OpenMP settings side by side: the binary's default (one thread per core that other processes
# leave free), and with a thread per core: libgomp's own spin count (300,000), other spin counts,
# a passive wait policy; and one thread. Rounds are interleaved so that drift hits every setting alike.
#   bench/busy_machine.sh [ROUNDS]      (default 3; prints a table of median step seconds)
# Environment: BIN (default build/diffuse), BATCH (default 64), MODEL (default mnist),
# SETTINGS (space-separated, default below; each NAME is one of the cases in run_setting).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-build/diffuse}
rounds=${1:-3}
batch=${BATCH:-64}
model=${MODEL:-mnist}
settings=(${SETTINGS:-default spin-300000 spin-30000 spin-1000 passive threads-1})
cores=$(nproc)
busy_pid=

run_setting() {  # prints the median seconds of one bench run under setting $1
  local env=() threads=()
  case $1 in
    default) ;;
    spin-*) env=(GOMP_SPINCOUNT=${1#spin-}) threads=(--threads "$cores") ;;
    passive) env=(OMP_WAIT_POLICY=passive) threads=(--threads "$cores") ;;
    threads-*) threads=(--threads ${1#threads-}) ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
  env "${env[@]}" "$bin" "${threads[@]}" bench --model "$model" --what train --batch-size "$batch" --repeat 5 --json \
    2>/dev/null | tail -1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["median_seconds"])'
}

stop_busy() { if [ -n "$busy_pid" ]; then kill "$busy_pid" 2>/dev/null || true; fi; busy_pid=; }
trap stop_busy EXIT

declare -A results
for ((r = 0; r < rounds; r++)); do
  for load in idle busy; do
    [ "$load" = busy ] && { yes > /dev/null & busy_pid=$!; }
    for s in "${settings[@]}"; do
      results[$load,$s]+="$(run_setting "$s") "
    done
    stop_busy
  done
done

median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "| setting | idle: s/step | one core busy: s/step | busy / idle |"
echo "| --- | --- | --- | --- |"
for s in "${settings[@]}"; do
  idle=$(median "${results[idle,$s]}") busy=$(median "${results[busy,$s]}")
  printf '| %s | %.3f | %.3f | %.2f |\n' "$s" "$idle" "$busy" "$(echo "$busy / $idle" | bc -l)"
done
