#!/usr/bin/env python3
"""Runs one `diffuse bench` configuration as is and with an environment variable changed, or with
another build of diffuse, in turn, and prints each pair of median times, their ratio and the median
ratio: a side-by-side A/B of a switch such as DIFFUSE_BLOCKED_ACTIVATIONS=0, or of a change against
the build before it, on a machine whose speed drifts.

  bench/env_ab.py DIFFUSE_BLOCKED_ACTIVATIONS=0 --rounds 3 -- --model mnist --what train --batch-size 16
  bench/env_ab.py --against /tmp/diffuse-after --rounds 12 -- --model mnist --what train --batch-size 16

A switch the code reads on every call (DIFFUSE_OWN_WINOGRAD, DIFFUSE_CONV_ALGORITHM) is better
compared inside one process, run by run: `diffuse bench ... --alternate VAR=VALUE`.
"""
import argparse
import json
import os
import subprocess
import sys

from compare import median  # bench/compare.py, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))


def seconds(binary, bench_args, env):
    p = subprocess.run([binary, "bench", *bench_args, "--json"], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"diffuse bench failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["median_seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("setting", nargs="?", help="VAR=VALUE for the B runs")
    ap.add_argument("--against", help="another diffuse binary for the B runs (A: --binary)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "build", "diffuse"))
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:split])
    bench_args = argv[split + 1:]  # after "--": the arguments of `diffuse bench`
    if not bench_args:
        sys.exit("give the arguments of `diffuse bench` after --")
    if not a.setting and not a.against:
        sys.exit("give VAR=VALUE, --against BINARY, or both")
    env_a = dict(os.environ)
    env_b = dict(env_a)
    if a.setting:
        name, sep, value = a.setting.partition("=")
        if not sep or not name:
            sys.exit(f"expected VAR=VALUE, got {a.setting!r}")
        env_a.pop(name, None)
        env_b = dict(env_a, **{name: value})
    binary_b = a.against or a.binary
    for b in {a.binary, binary_b}:
        if not os.access(b, os.X_OK):
            sys.exit(f"env_ab.py: no diffuse binary at {b} (scripts/build makes build/diffuse)")
    label_b = " ".join(x for x in (a.setting, a.against) if x)
    ratios = []
    print(f"| round | as is, s | {label_b}, s | ratio B/A |")
    print("| --- | --- | --- | --- |")
    for r in range(a.rounds):
        # the order swaps every round, so that a drifting machine treats both alike
        if r % 2 == 0:
            ta, tb = seconds(a.binary, bench_args, env_a), seconds(binary_b, bench_args, env_b)
        else:
            tb, ta = seconds(binary_b, bench_args, env_b), seconds(a.binary, bench_args, env_a)
        ratios.append(tb / ta)
        print(f"| {r + 1} | {ta:.4f} | {tb:.4f} | {tb / ta:.3f} |")
    print(f"\nmedian ratio B/A: {median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f})")


if __name__ == "__main__":
    main()
