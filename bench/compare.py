#!/usr/bin/env python3
"""Runs `diffuse bench` and the Python reference (reference_unet.py) side by side in one go and
prints a Markdown table of their times and ratios (reference time / diffuse time: > 1 means
diffuse is faster).

  bench/compare.py [--binary build/diffuse] [--quick] [--models mnist,ddpm-cifar10]
                   [--precisions fp32,bf16] [--rounds 3] [--conv-kernels auto] [--json results.jsonl]
                   [--rows train16,infer64]

Each configuration is run by both implementations in turn, --rounds times (the order swapped
every round), so that both see the same machine state; the ratio column is the median of the
rounds' ratios, with their range beside it: the development machines' speed drifts by ±20 %
within minutes, and a pair of runs taken together is far steadier than either alone. bf16 rows
are skipped where the CPU has no native bf16 (see `diffuse bench`).
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"  # Debian's python3-torch lives there


def cases(models, quick):
    """(model, what, batch, steps, repeat, warmup) per row: the issue's configurations."""
    rows = []
    for m in models:
        big = m == "ddpm-cifar10"
        r = 1 if (big or quick) else 5
        rows += [
            (m, "train", 16, 0, 2 if big else r + 2, 1),
            (m, "train", 64, 0, 1 if big else r, 1),
            (m, "infer", 64, 0, 2 if big else r, 1),
            # DDIM-50 of 64 images; ddpm-cifar10 takes DDIM-5 (about 4.5 min per run at S = 50 on two cores)
            (m, "sample", 64, 5 if big else 50, 1, 0),
        ]
    return rows


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "build", "diffuse"))
    ap.add_argument("--models", default="mnist,ddpm-cifar10")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--memory-format", default="auto",
                    help="diffuse's layout (auto: channels-last for bf16 on a CPU with native bf16, else NCHW; "
                         "the reference stays NCHW)")
    ap.add_argument("--conv-kernels", default="auto", help="diffuse's float32 3x3 convolutions: aten, onednn or auto")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs per row (ddpm-cifar10: 1)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--rows", default="",
                    help="only these rows, e.g. 'train16,infer64' (what + batch; DDIM rows are 'sample64'); "
                         "with more --rounds, a steadier median for one row on a noisy machine")
    ap.add_argument("--json", help="append every result as one JSON line to this file")
    a = ap.parse_args()
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"compare.py: no diffuse binary at {a.binary} (scripts/build makes it; or give --binary)")
    native_bf16 = any(f in open("/proc/cpuinfo").read() for f in (" avx512_bf16", " amx_bf16"))
    out = open(a.json, "a") if a.json else None

    peak = {}
    for p in a.precisions.split(","):
        if p == "bf16" and not native_bf16:
            continue
        r = run([a.binary, "bench", "--what", "conv", "--precision", p, "--json"])
        peak[p] = r["achieved_gflops_per_second"]

    print(f"CPU: {run([a.binary, 'bench', '--what', 'conv', '--json', '--repeat', '1'])['cpu']}, "
          f"{os.cpu_count()} threads; a large 3x3 convolution with diffuse's kernels: "
          + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peak.items()))
    print()
    print("| model | what | batch | precision | diffuse convolutions | diffuse s | reference s | ratio (range) "
          "| diffuse GFLOP/s | % of conv peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in a.precisions.split(","):
        if p == "bf16" and not native_bf16:
            print(f"(bf16 skipped: this CPU has no native bf16)")
            continue
        for model, what, batch, steps, repeat, warmup in cases(a.models.split(","), a.quick):
            if a.rows and f"{what}{batch}" not in a.rows.split(","):
                continue
            common = ["--model", model, "--what", what, "--batch-size", str(batch), "--repeat", str(repeat),
                      "--warmup", str(warmup), "--precision", p]
            if steps:
                common += ["--steps", str(steps)]
            mine_cmd = [a.binary, "bench", "--json", "--memory-format", a.memory_format,
                        "--conv-kernels", a.conv_kernels] + common
            ref_cmd = [PYTHON, os.path.join(HERE, "reference_unet.py"), "bench"] + common
            mines, refs = [], []
            for r in range(1 if model == "ddpm-cifar10" and not a.rows else a.rounds):
                if r % 2 == 0:
                    mines.append(run(mine_cmd))
                    refs.append(run(ref_cmd))
                else:
                    refs.append(run(ref_cmd))
                    mines.append(run(mine_cmd))
            if out:
                for mine, ref in zip(mines, refs):
                    out.write(json.dumps({"impl": "diffuse", "result": mine}) + "\n")
                    out.write(json.dumps({"impl": "reference", "result": ref}) + "\n")
            label = f"DDIM-{steps}" if what == "sample" else what
            ratios = sorted(ref["median_seconds"] / mine["median_seconds"] for mine, ref in zip(mines, refs))
            mine_s = median([m["median_seconds"] for m in mines])
            ref_s = median([r["median_seconds"] for r in refs])
            gflops = median([m["achieved_gflops_per_second"] for m in mines])
            spread = f" ({ratios[0]:.2f}–{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            print(f"| {model} | {label} | {batch} | {p} | {mines[0].get('conv_kernels', '?')} | {mine_s:.3f} | {ref_s:.3f} "
                  f"| {median(ratios):.2f}x{spread} | {gflops:.0f} | {100 * gflops / peak[p]:.0f}% |", flush=True)

if __name__ == "__main__":
    main()
