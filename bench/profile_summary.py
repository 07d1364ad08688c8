#!/usr/bin/env python3
"""Sums a chrome trace written by `diffuse bench --profile FILE` per operator: self time (the
operator's time minus the operators it called), share of the total, and call count.

  bench/profile_summary.py FILE [--top 20]
"""
import argparse
import collections
import json


def self_times(events):
    """{name: [self microseconds, calls]} from complete ("X") events nested by time on each thread."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, event] of the enclosing operators
        for e in evs:
            while stack and e["ts"] >= stack[-1][0]:
                stack.pop()
            totals[e["name"]][0] += e["dur"]
            totals[e["name"]][1] += 1
            if stack:  # the caller's self time excludes this call
                totals[stack[-1][1]["name"]][0] -= e["dur"]
            stack.append((e["ts"] + e["dur"], e))
    return totals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    with open(a.trace) as f:
        events = json.load(f)
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    totals = self_times(events)
    whole = sum(t for t, _ in totals.values())
    print(f"| operator | self ms | share | calls |")
    print(f"| --- | --- | --- | --- |")
    for name, (t, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"| {name} | {t / 1e3:.1f} | {100 * t / whole:.1f} % | {calls} |")
    print(f"\ntotal self time {whole / 1e6:.2f} s")


if __name__ == "__main__":
    main()
