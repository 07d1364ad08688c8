#!/usr/bin/env bash
# Training beside load that changes during the run: does the thread count follow it?
#   bench/follow_load.sh [BIN]     (default build/diffuse; a copy of an older build gives the "before")
# Two runs of 1,000 steps (the main job's network, batch 64), each printing its log.csv
# (images_per_second per 100 steps): "ends", a busy process (`yes`) beside the run for its
# first 30 s; "arrives", a busy process from 25 s into the run to its end. Needs an otherwise
# idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/diffuse}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
train() {
  "$bin" train --data mnist --model mnist --channels 16 --objective v --min-snr-gamma 5 --steps 1000 --log-every 100 \
    --preview-every 0 --checkpoint-every 0 --no-progress --out "$out/$1" > "$out/$1.log" 2>&1
}
yes > /dev/null & busy=$!
sleep 1
train ends & run=$!
sleep 30; kill $busy
wait $run
echo "== a busy process for the first 30 s"; cat "$out/ends/log.csv"
train arrives & run=$!
sleep 25; yes > /dev/null & busy=$!
wait $run; kill $busy
echo "== a busy process from 25 s on"; cat "$out/arrives/log.csv"
