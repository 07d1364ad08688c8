#!/usr/bin/env bash
# Work beside load that changes during the run: does the thread count follow it?
#   bench/follow_load.sh [BIN] [train|sample]   (default build/diffuse, train; a copy of an older
#                                                build gives the "before")
# train: two runs of 1,000 steps (the main job's network, batch 64), each printing its log.csv
# (images_per_second per 100 steps): "ends", a busy process (`yes`) beside the run for its first
# 30 s; "arrives", a busy process from 25 s into the run to its end.
# sample: `sample --n 2000` (DDIM-50) from a checkpoint of that network trained for 50 steps
# (the speed does not depend on the weights), printing the seconds of each: "ends", a busy process
# for the first 15 s; "arrives", a busy process from 10 s on; and "idle", no other process.
# Needs an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/diffuse}
what=${2:-train}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
train() {  # train NAME STEPS
  "$bin" train --data mnist --model mnist --channels 16 --objective v --min-snr-gamma 5 --steps "$2" --log-every 100 \
    --preview-every 0 --checkpoint-every 0 --no-progress --out "$out/$1" > "$out/$1.log" 2>&1
}
sample() {  # sample NAME: prints NAME and the seconds
  local start end
  start=$(date +%s.%N)
  "$bin" sample --checkpoint "$out/net/checkpoint.safetensors" --n 2000 --sampler ddim --steps 50 --seed 0 \
    --no-progress --out "$out/$1.png" > "$out/$1.log" 2>&1
  end=$(date +%s.%N)
  echo "$1: $(echo "$end - $start" | bc) s"
}
if [ "$what" = sample ]; then
  train net 50
  sample idle
  yes > /dev/null & busy=$!
  sleep 1
  sample ends & run=$!
  sleep 15; kill $busy
  wait $run
  sample arrives & run=$!
  sleep 10; yes > /dev/null & busy=$!
  wait $run; kill $busy
  exit 0
fi
yes > /dev/null & busy=$!
sleep 1
train ends 1000 & run=$!
sleep 30; kill $busy
wait $run
echo "== a busy process for the first 30 s"; cat "$out/ends/log.csv"
train arrives 1000 & run=$!
sleep 25; yes > /dev/null & busy=$!
wait $run; kill $busy
echo "== a busy process from 25 s on"; cat "$out/arrives/log.csv"
