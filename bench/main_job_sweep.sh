#!/usr/bin/env bash
# Quality per minute for the main job: trains the `mnist` model with several step counts and
# batch sizes (each a whole run: warm-up, cosine decay to 0 at its last step), measures each
# checkpoint's cFID (500 images, DDIM-50, eta 0 and 1) and times a training step of each batch
# size on a quiet machine, then prints one table row per run.
#   bench/main_job_sweep.sh [RUNS...]     RUN = STEPSxBATCH, default: 600x64 1200x64 2400x32 2400x64
# Environment: OUT (default runs/sweep), PRECISION (default auto, as the main job trains), BIN
# (default build/diffuse; a copy lets you rebuild while it runs).
# Training and evaluation do not need a quiet machine (their wall time is not used); the step
# timing at the end does. Finished runs are reused, so the script can be re-run to add rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-build/diffuse}
out=${OUT:-runs/sweep}
precision=${PRECISION:-auto}
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(600x64 1200x64 2400x32 2400x64)
mkdir -p "$out"

for run in "${runs[@]}"; do
  steps=${run%x*} batch=${run#*x} dir="$out/$run"
  if ! grep -q "^$steps," "$dir/log.csv" 2>/dev/null; then
    "$bin" train --data mnist --model mnist --out "$dir" --steps "$steps" --batch-size "$batch" --lr 1e-3 \
      --preview-every 0 --checkpoint-every 400 --precision "$precision" --no-progress > "$dir.train.log" 2>&1
  fi
  for eta in 0 1; do
    [ -s "$dir/fid_eta$eta.json" ] && continue
    "$bin" eval --checkpoint "$dir/checkpoint.safetensors" --metric fid --n 500 --eta "$eta" --json --no-progress \
      > "$dir/fid_eta$eta.json.tmp" 2> "$dir/fid_eta$eta.err"
    mv "$dir/fid_eta$eta.json.tmp" "$dir/fid_eta$eta.json"
  done
done

# Seconds per training step of each batch size, median of 5, in float32 and in the main job's precision.
declare -A step_seconds
for batch in $(printf '%s\n' "${runs[@]}" | sed 's/.*x//' | sort -un); do
  for p in $(printf "%s\n" fp32 "$precision" | sort -u); do
    step_seconds[$batch,$p]=$("$bin" bench --model mnist --what train --batch-size "$batch" --repeat 5 --precision "$p" \
      --json 2>/dev/null | tail -1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["median_seconds"])')
  done
done

echo "| steps × batch | images | minutes, fp32 ($( "$bin" bench --what conv --repeat 1 --json 2>/dev/null | tail -1 |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["conv_kernels"])') convolutions) | minutes, --precision $precision | cFID η = 0 | cFID η = 1 |"
echo "| --- | --- | --- | --- | --- | --- |"
for run in "${runs[@]}"; do
  steps=${run%x*} batch=${run#*x} dir="$out/$run"
  fid0=$(/usr/bin/python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["cfid"], 1))' "$dir/fid_eta0.json")
  fid1=$(/usr/bin/python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["cfid"], 1))' "$dir/fid_eta1.json")
  /usr/bin/python3 - "$steps" "$batch" "${step_seconds[$batch,fp32]}" "${step_seconds[$batch,$precision]}" "$fid0" "$fid1" <<'EOF'
import sys
steps, batch, s32, sp, f0, f1 = sys.argv[1:]
steps, batch = int(steps), int(batch)
print(f"| {steps} × {batch} | {steps * batch:,} | {steps * float(s32) / 60:.1f} | {steps * float(sp) / 60:.1f} | {f0} | {f1} |")
EOF
done
