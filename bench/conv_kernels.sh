#!/usr/bin/env bash
# The U-Nets' 3×3 convolution shapes, forward pass, LibTorch's kernels against oneDNN's Winograd,
# side by side (each shape: aten, onednn, aten, onednn; the better of each pair's two runs).
#   bench/conv_kernels.sh [build/diffuse]
set -euo pipefail
bin=${1:-$(dirname "$0")/../build/diffuse}
rate() {  # GFLOP/s of one shape with one kernel choice
  "$bin" bench --what conv --precision fp32 --conv-kernels "$1" --conv-shape $2 --json 2>/dev/null | tail -1 |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["achieved_gflops_per_second"])'
}
echo "| batch × channels × size | where | aten GFLOP/s | onednn GFLOP/s (effective) | ratio |"
echo "| --- | --- | --- | --- | --- |"
while read -r dims where; do
  shape=${dims//,/ }
  a1=$(rate aten "$shape"); o1=$(rate onednn "$shape"); a2=$(rate aten "$shape"); o2=$(rate onednn "$shape")
  /usr/bin/python3 - "$shape" "$where" "$a1" "$a2" "$o1" "$o2" <<'EOF'
import sys
shape, where, a1, a2, o1, o2 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
a, o = max(a1, a2), max(o1, o2)
print(f"| {shape.replace(' ', ' × ')} | {where.replace('_', ' ')} | {a:.0f} | {o:.0f} | {o / a:.2f}× |")
EOF
done <<'SHAPES'
64,32,28 mnist_28×28
64,64,14 mnist_14×14
64,64,7 mnist_7×7
16,128,32 ddpm-cifar10_32×32
16,256,16 ddpm-cifar10_16×16
16,256,8 ddpm-cifar10_8×8
16,256,4 ddpm-cifar10_4×4
SHAPES
