#!/usr/bin/env bash
# Quality per minute for the main job: trains the `mnist` model once per recipe (each a whole run:
# warm-up, cosine decay to 0 at its last step, seed 0), measures each checkpoint's cFID (N images,
# seed 0: DDIM-50 at η = 0 and η = 1, DPM-Solver++(2M) with 20 steps, DDIM-200 at η = 1; beside them
# the cFID of N real training images, the floor at this N) and times a training step of
# each batch size and network shape on a quiet machine, then prints one table row per recipe.
#   bench/main_job_sweep.sh [RECIPE...]     RECIPE: a name from `recipes` below (default: all)
# Environment: OUT (default runs/sweep), N (images per cFID, default 500), SEEDS (the x_T of each
# cFID, default 0; with several, e.g. SEEDS="0 1 2", each cell lists one cFID per seed: the x_T alone
# move a cFID of 1,000 images by up to 5 points), BIN (default build/diffuse; a copy lets you rebuild
# while it runs), TIMING=0 (no step timing, minutes left out).
# Training and evaluation do not need a quiet machine (their wall time is not used); the step
# timing at the end does. Finished runs are reused, so the script can be re-run to add rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-build/diffuse}
out=${OUT:-runs/sweep}
n=${N:-500}
seeds=(${SEEDS:-0})

# NAME → train flags beyond `--data mnist --model mnist --precision auto`; the quality levers
# one at a time against eps-1200 (the first main job's recipe), then widths for ten minutes, then
# levers one at a time around v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-5000, the main job's (its -seed-1
# twin measures the run-to-run noise; its -15000 twin is thirty minutes of it; its -snapshots twin
# is the same run with EMA snapshots, for bench/posthoc_ema_sweep.sh); then the 1,600 steps that fit
# ten minutes on two AVX2 cores, with the network's widths 16, 32, 32 and 16, 32, 48, the 2,200
# that fit there once the AVX2 kernels were mended, and the 2,700 once activations were blocked by 8
# (and its -seed-1 twin); then depth and attention at ten minutes there: two residual blocks a level
# (1,800 steps), and self-attention in the middle block only (2,700, two seeds); and the 3,400,
# 3,300 and 3,200 steps that `train --minutes 10` fitted there (the last two with the fused own
# Winograd, on busier hours), and the 3,300 with t drawn by the loss (`--t-importance`), both also
# from seed 1, and the 2,900 that the main job fitted with it (2,990 once refitted as it ran: that
# run's learning rate followed the refits, which a run of --steps 2990 does not; 3,190 for the run with
# the refits from the slower of two windows, likewise); the 3,300 with
# stratified t on top (`--t-stratified`), from both seeds; self-attention in the middle block only
# with t drawn by the loss (3,300, both seeds); and 8 channels at 28×28 (4,300 steps, the same time),
# from both seeds.
declare -A recipes=(
  [eps-1200]="--steps 1200 --batch-size 64 --lr 1e-3"
  [eps-2400]="--steps 2400 --batch-size 64 --lr 1e-3"
  [eps-min-snr-5-1200]="--steps 1200 --batch-size 64 --lr 1e-3 --min-snr-gamma 5"
  [v-1200]="--steps 1200 --batch-size 64 --lr 1e-3 --objective v"
  [v-min-snr-5-1200]="--steps 1200 --batch-size 64 --lr 1e-3 --objective v --min-snr-gamma 5"
  [eps-lr-2e-3-1200]="--steps 1200 --batch-size 64 --lr 2e-3"
  [eps-batch-32-2400]="--steps 2400 --batch-size 32 --lr 1e-3"
  [v-min-snr-5-cosine-1200]="--steps 1200 --batch-size 64 --lr 1e-3 --objective v --min-snr-gamma 5 --schedule cosine"
  [v-min-snr-5-lr-2e-3-1200]="--steps 1200 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5"
  [v-min-snr-5-2000]="--steps 2000 --batch-size 64 --lr 1e-3 --objective v --min-snr-gamma 5"
  [v-min-snr-5-c16-4000]="--steps 4000 --batch-size 64 --lr 1e-3 --objective v --min-snr-gamma 5 --channels 16"
  [v-min-snr-5-c48-1000]="--steps 1000 --batch-size 64 --lr 1e-3 --objective v --min-snr-gamma 5 --channels 48"
  [v-min-snr-5-c16-5000]="--steps 5000 --batch-size 64 --lr 1e-3 --objective v --min-snr-gamma 5 --channels 16"
  [v-min-snr-5-c16-lr-2e-3-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16"
  [v-min-snr-5-c16-lr-4e-3-5000]="--steps 5000 --batch-size 64 --lr 4e-3 --objective v --min-snr-gamma 5 --channels 16"
  [v-min-snr-5-c16-lr-2e-3-lsnr-0-2-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean 0 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-2.4-2.4-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean 2.4 --log-snr-std 2.4"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m1-2-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -1 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m3-2-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -3 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-3-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 3"
  [v-min-snr-5-c16-batch-32-lr-2e-3-lsnr-m2-2-10000]="--steps 10000 --batch-size 32 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-seed-1-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --seed 1"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-15000]="--steps 15000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-beta2-0.99-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --adam-beta2 0.99"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-snapshots-5000]="--steps 5000 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --ema-snapshot-every 250"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-1600]="--steps 1600 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-2200]="--steps 2200 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-2700]="--steps 2700 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-seed-1-2700]="--steps 2700 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --seed 1"
  [v-min-snr-5-c16-res-2-lr-2e-3-lsnr-m2-2-1800]="--steps 1800 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --res-blocks 2 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-attn-mid-lr-2e-3-lsnr-m2-2-2700]="--steps 2700 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --attention-res 0 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-attn-mid-lr-2e-3-lsnr-m2-2-seed-1-2700]="--steps 2700 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --attention-res 0 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --seed 1"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-3400]="--steps 3400 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-3200]="--steps 3200 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-importance-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-importance-2900]="--steps 2900 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-importance-2990]="--steps 2990 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-importance-3190]="--steps 3190 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-seed-1-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --seed 1"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-importance-seed-1-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance --seed 1"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-importance-stratified-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance --t-stratified"
  [v-min-snr-5-c16-lr-2e-3-lsnr-m2-2-importance-stratified-seed-1-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance --t-stratified --seed 1"
  [v-min-snr-5-c16-attn-mid-lr-2e-3-lsnr-m2-2-importance-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --attention-res 0 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance"
  [v-min-snr-5-c16-attn-mid-lr-2e-3-lsnr-m2-2-importance-seed-1-3300]="--steps 3300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --attention-res 0 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance --seed 1"
  [v-min-snr-5-c8-mult-1-4-4-lr-2e-3-lsnr-m2-2-importance-4300]="--steps 4300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 8 --channel-mult 1,4,4 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance"
  [v-min-snr-5-c8-mult-1-4-4-lr-2e-3-lsnr-m2-2-importance-seed-1-4300]="--steps 4300 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 8 --channel-mult 1,4,4 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2 --t-importance --seed 1"
  [v-min-snr-5-c16-mult-1-2-3-lr-2e-3-lsnr-m2-2-1600]="--steps 1600 --batch-size 64 --lr 2e-3 --objective v --min-snr-gamma 5 --channels 16 --channel-mult 1,2,3 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
  [v-min-snr-5-c16-batch-128-lr-4e-3-lsnr-m2-2-2500]="--steps 2500 --batch-size 128 --lr 4e-3 --objective v --min-snr-gamma 5 --channels 16 --t-sampling log-snr-normal --log-snr-mean -2 --log-snr-std 2"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=($(printf '%s\n' "${!recipes[@]}" | sort))
mkdir -p "$out"

flag_value() {  # flag_value FLAG FLAGS... → the value after FLAG
  local flag=$1; shift
  while [ $# -gt 1 ]; do [ "$1" = "$flag" ] && { echo "$2"; return; }; shift; done
}

result_file() {  # result_file DIR SAMPLER SEED → where that cFID is kept (seed 0's without a suffix)
  local suffix=""; [ "$3" != 0 ] && suffix="_seed$3"
  echo "$1/fid_n${n}_$2$suffix.json"
}

timing_flags() {  # timing_flags FLAGS... → what `bench` needs of them: the batch size and the network's shape
  local out=()
  while [ $# -gt 1 ]; do
    case $1 in --batch-size|--channels|--channel-mult|--res-blocks|--attention-res) out+=("$1" "$2"); shift ;; esac
    shift
  done
  echo "${out[*]}"
}

for name in "${names[@]}"; do
  [ -n "${recipes[$name]:-}" ] || { echo "unknown recipe $name (known: ${!recipes[*]})" >&2; exit 2; }
  flags=(${recipes[$name]}) dir="$out/$name"
  steps=$(flag_value --steps "${flags[@]}")
  if ! grep -q "^$steps," "$dir/log.csv" 2>/dev/null; then
    resume=(); [ -f "$dir/train_state.safetensors" ] && resume=(--resume)
    "$bin" train --data mnist --model mnist --out "$dir" "${flags[@]}" --preview-every 0 --checkpoint-every 400 \
      --precision auto --no-progress "${resume[@]}" > "$dir.train.log" 2>&1
  fi
  for seed in "${seeds[@]}"; do
    for sampler in eta0 eta1 dpm20 eta1_200; do
      result=$(result_file "$dir" "$sampler" "$seed")
      [ -s "$result" ] && continue
      case $sampler in
        eta1_200) sampler_flags=(--sampler ddim --steps 200 --eta 1) ;;
        eta*) sampler_flags=(--sampler ddim --steps 50 --eta "${sampler#eta}") ;;
        dpm20) sampler_flags=(--sampler dpm++2m --steps 20) ;;
      esac
      "$bin" eval --checkpoint "$dir/checkpoint.safetensors" --metric fid --n "$n" "${sampler_flags[@]}" \
        --seed "$seed" --json --no-progress > "$result.tmp" 2> "$result.err"
      mv "$result.tmp" "$result"
    done
  done
done

# Seconds per training step of each batch size and network shape, median of 5, in the precision the
# runs trained in.
declare -A step_seconds
if [ "${TIMING:-1}" != 0 ]; then
  for name in "${names[@]}"; do
    key=$(timing_flags ${recipes[$name]})
    [ -n "${step_seconds[$key]:-}" ] && continue
    step_seconds[$key]=$("$bin" bench --model mnist --what train $key --repeat 5 --precision auto --json 2>/dev/null |
      tail -1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["median_seconds"])')
  done
fi

cfid() {  # cfid FILE [KEY] → the value rounded, "–" where the file has no KEY
  /usr/bin/python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("–" if v is None else round(v, 1))' \
    "$1" "${2:-cfid}"
}
cfids() {  # cfids DIR SAMPLER → "a / b / c": one cFID per seed of SEEDS
  local out=() seed
  for seed in "${seeds[@]}"; do out+=("$(cfid "$(result_file "$1" "$2" "$seed")")"); done
  local IFS=/; echo "${out[*]}" | sed 's|/| / |g'
}
echo "| recipe | flags | images | minutes of training | cFID DDIM-50 η = 0 | η = 1 | DPM-Solver++(2M)-20 | DDIM-200 η = 1 | $n real images |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for name in "${names[@]}"; do
  flags=${recipes[$name]} dir="$out/$name"
  steps=$(flag_value --steps $flags) batch=$(flag_value --batch-size $flags)
  minutes="–" key=$(timing_flags $flags)
  [ -n "${step_seconds[$key]:-}" ] && minutes=$(echo "scale=1; $steps * ${step_seconds[$key]} / 60" | bc -l)
  echo "| $name | \`$flags\` | $((steps * batch)) | $minutes | $(cfids "$dir" eta0) | $(cfids "$dir" eta1) | $(cfids "$dir" dpm20) | $(cfids "$dir" eta1_200) | $(cfid "$(result_file "$dir" eta0 "${seeds[0]}")" cfid_real) |"
done
