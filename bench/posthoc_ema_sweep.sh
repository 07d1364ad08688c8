#!/usr/bin/env bash
# The EMA's width, chosen after training: rebuilds the EMA of each σ_rel from a run's snapshots
# (`diffuse ema`), measures each checkpoint's cFID beside the run's own (EMA decay 0.999) and its raw
# weights, and prints one table row per weights.
#   bench/posthoc_ema_sweep.sh RUN_DIR     RUN_DIR: a `train --ema-snapshot-every N` run
# Environment: SIGMA_RELS (default "0.01 0.02 0.05 0.1 0.2"), N (images per cFID, default 500),
# BIN (default build/diffuse), SAMPLERS (default "eta0 dpm20"; also eta1).
# Finished evaluations are reused, so the script can be re-run to add rows.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: bench/posthoc_ema_sweep.sh RUN_DIR}
bin=${BIN:-build/diffuse}
n=${N:-500}
sigma_rels=(${SIGMA_RELS:-0.01 0.02 0.05 0.1 0.2})
samplers=(${SAMPLERS:-eta0 dpm20})

checkpoints=("$run/checkpoint.safetensors")
for s in "${sigma_rels[@]}"; do
  file=$(printf '%s/checkpoint_ema_%.3f.safetensors' "$run" "$s")
  [ -s "$file" ] || "$bin" ema --run "$run" --sigma-rel "$s" 2>&1 | tee -a "$run/posthoc_ema.log"
  checkpoints+=("$file")
done
# The raw weights of the last step: the train state's model/ tensors, as a checkpoint.
raw="$run/checkpoint_raw.safetensors"
if [ ! -s "$raw" ]; then
  /usr/bin/python3 - "$run" "$raw" <<'EOF'
import json, struct, sys
run, out = sys.argv[1], sys.argv[2]
def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), f.read()
state, state_data = read(run + "/train_state.safetensors")
ckpt, _ = read(run + "/checkpoint.safetensors")
header, blobs, offset = {"__metadata__": ckpt["__metadata__"]}, [], 0
for name, entry in ckpt.items():
    if name == "__metadata__":
        continue
    src = state["model/" + name]
    begin, end = src["data_offsets"]
    blobs.append(state_data[begin:end])
    header[name] = {"dtype": src["dtype"], "shape": src["shape"], "data_offsets": [offset, offset + end - begin]}
    offset += end - begin
text = json.dumps(header).encode()
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
EOF
fi
checkpoints+=("$raw")

cfid() {  # cfid FILE → the value rounded
  /usr/bin/python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["cfid"], 1))' "$1"
}
header="| weights |" rule="| --- |"
for sampler in "${samplers[@]}"; do
  case $sampler in eta0) header+=" DDIM-50 η = 0 |" ;; eta1) header+=" DDIM-50 η = 1 |" ;; dpm20) header+=" DPM-Solver++(2M)-20 |" ;; esac
  rule+=" --- |"
done
rows=()
for ckpt in "${checkpoints[@]}"; do
  row="| $(basename "$ckpt" .safetensors) |"
  for sampler in "${samplers[@]}"; do
    result="${ckpt%.safetensors}.fid_n${n}_$sampler.json"
    if [ ! -s "$result" ]; then
      case $sampler in
        eta*) sampler_flags=(--sampler ddim --steps 50 --eta "${sampler#eta}") ;;
        dpm20) sampler_flags=(--sampler dpm++2m --steps 20) ;;
      esac
      "$bin" eval --checkpoint "$ckpt" --metric fid --n "$n" "${sampler_flags[@]}" --json --no-progress \
        > "$result.tmp" 2> "$result.err"
      mv "$result.tmp" "$result"
    fi
    row+=" $(cfid "$result") |"
  done
  rows+=("$row")
done
echo "$header"
echo "$rule"
printf '%s\n' "${rows[@]}"
