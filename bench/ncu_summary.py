#!/usr/bin/env python3
"""Sums the GPU time of diffuse's own kernels by kind, from Nsight Compute's CSV.

Run the C++ path under ncu with one metric (one replay pass per kernel), e.g.

  ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw \\
      build-cuda/diffuse bench --device cuda --model ddpm-cifar10 --what infer --batch-size 256 \\
      --precision bf16 --memory-format channels-last --repeat 1 --warmup 0 > ncu.csv
  bench/ncu_summary.py ncu.csv --passes 2

(scripts/gpu-check does this with NCU_PROFILE=1). Lines that are not ncu's quoted CSV (the
program's own output) are skipped. --passes divides the totals, for a run of that many identical
forward passes (warm-up and timed); the table lists kinds (convolution, GroupNorm, copies, ...) and
the largest kernels. The network's random initialisation runs once and is listed as its own kind;
with --random-per-pass (a training step, which draws noise every step) random-number kernels are a
per-pass kind instead.
"""
import argparse
import collections
import csv
import io
import re
import sys

# kernel-name patterns → kind, first match wins (names as cuDNN, cuBLAS, LibTorch and diffuse give them)
KINDS = [
    ("weight initialisation (once, not per pass)", r"distribution_|normal_kernel|uniform_kernel|philox"),
    ("convolution", r"conv|cudnn|implicit_gemm|xmma|sm90_xmma|fprop|dgrad|wgrad|cutlass"),
    ("GroupNorm (own kernel)", r"group_norm_nhwc|GroupNormNhwc|diffuse"),
    ("GroupNorm (LibTorch)", r"group_norm|GroupNorm|RowwiseMoments|ComputeFused"),
    ("matrix products", r"gemm|gemv|cublas|ampere_|sm80_|sm90_"),
    ("softmax", r"softmax"),
    ("cat", r"CatArray|cat_"),
    ("upsample", r"upsample"),
    ("copies and casts", r"copy|Copy|direct_copy|cast|transpose|nchwToNhwc|nhwcToNchw"),
    ("element-wise", r"elementwise|vectorized|unrolled|Functor|silu|add|mul"),
]


def kind_of(name):
    name = name.replace("_nocast", "")  # LibTorch's gpu_kernel_impl_nocast<…add…> is element-wise, not a cast
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def read_rows(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("".join(lines))))
    if not rows:
        sys.exit(f"{path}: no ncu CSV rows (was ncu run with --csv --page raw?)")
    header = rows[0]
    try:
        name_col, time_col = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    except ValueError:
        sys.exit(f"{path}: the CSV has no 'Kernel Name' or 'gpu__time_duration.sum' column")
    scale = 1e-3  # nanoseconds → microseconds unless the units row says otherwise
    data = rows[1:]
    if data and not data[0][0].strip():  # the units row
        unit = data[0][time_col]
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(unit, 1e-3)
        data = data[1:]
    return [(r[name_col], float(r[time_col].replace(",", "")) * scale) for r in data if len(r) > time_col]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--passes", type=int, default=1, help="identical passes in the run (divides the totals)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--random-per-pass", action="store_true",
                    help="random-number kernels are part of every pass (a training step's noise), not a one-off "
                         "weight initialisation")
    a = ap.parse_args()
    rows = read_rows(a.csv)
    by_kind, by_name = collections.defaultdict(float), collections.defaultdict(lambda: [0.0, 0])
    for name, us in rows:
        kind = kind_of(name)
        if a.random_per_pass and kind == KINDS[0][0]:
            kind = "random numbers (noise)"
        by_kind[kind] += us
        by_name[name][0] += us
        by_name[name][1] += 1
    init = by_kind.pop(KINDS[0][0], 0.0)
    total = sum(by_kind.values())
    once = "" if a.random_per_pass else f" (and {init / 1e3:.2f} ms of weight initialisation once)"
    print(f"{len(rows)} kernels, {total / a.passes / 1e3:.2f} ms of GPU time per pass{once}\n")
    print("| kind | ms per pass | share |")
    print("| --- | --- | --- |")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {us / a.passes / 1e3:.3f} | {100 * us / total:.1f} % |")
    print("\n| kernel | ms per pass | launches per pass |")
    print("| --- | --- | --- |")
    for name, (us, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: a.top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        print(f"| `{short}` | {us / a.passes / 1e3:.3f} | {n / a.passes:g} |")


if __name__ == "__main__":
    main()
