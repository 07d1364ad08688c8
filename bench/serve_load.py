#!/usr/bin/env python3
"""A bounded load test of `diffuse serve` on loopback: REQUESTS generations from CLIENTS concurrent
clients through the OpenAI images route, each with a seed of its own out of SEEDS; every answer is
checked against the answer that seed gave when asked alone (so none is wrong or mixed up between
clients), and throughput and latency percentiles are printed as a table.

  bench/serve_load.py --binary build/diffuse --checkpoint runs/mnist/checkpoint.safetensors \
      [--requests 200] [--clients 8] [--seeds 20] [--n 4] [--steps 20] [--sampler dpm++2m]

Starts its own server on a free port (--max-queue above CLIENTS, so that no request is refused),
and stops it with SIGTERM at the end. Python's standard library only.
"""
import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request


def post(port, path, body, timeout=600):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.load(reply)


def percentile(values, q):
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default="build/diffuse")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--n", type=int, default=4, help="images per request")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--threads", type=int, default=0, help="the server's compute threads (0: its default)")
    a = p.parse_args()

    command = [a.binary] + (["--threads", str(a.threads)] if a.threads else []) + [
        "serve", "--checkpoint", a.checkpoint, "--port", "0", "--max-queue", str(a.clients + 1)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    port = None
    log = ""
    while port is None:
        line = server.stderr.readline()
        if not line:
            sys.exit("the server exited before it listened:\n" + log)
        log += line
        m = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
        port = int(m.group(1)) if m else None
    threading.Thread(target=server.stderr.read, daemon=True).start()  # drain its log

    def ask(seed):
        body = {"n": a.n, "steps": a.steps, "sampler": a.sampler, "seed": seed}
        return [d["b64_json"] for d in post(port, "/v1/images/generations", body)["data"]]

    try:
        reference = {seed: ask(seed) for seed in range(a.seeds)}  # each seed alone, one after the other
        start_alone = time.perf_counter()
        ask(0)
        alone = time.perf_counter() - start_alone

        latencies, wrong, errors = [], [], []
        lock = threading.Lock()
        next_request = [0]

        def client():
            while True:
                with lock:
                    i = next_request[0]
                    if i >= a.requests:
                        return
                    next_request[0] += 1
                seed = i % a.seeds
                t0 = time.perf_counter()
                try:
                    images = ask(seed)
                except Exception as e:  # noqa: BLE001: every failure is counted and shown
                    with lock:
                        errors.append(f"request {i}: {e}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if images != reference[seed]:
                        wrong.append(i)

        start = time.perf_counter()
        workers = [threading.Thread(target=client) for _ in range(a.clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - start
    finally:
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=60)

    print(f"| requests | clients | images each | steps | wall (s) | requests/s | images/s | p50 (s) | p90 (s) | p99 (s) | max (s) | one alone (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    done = len(latencies)
    print(f"| {done} | {a.clients} | {a.n} | {a.steps} | {wall:.1f} | {done / wall:.2f} | {done * a.n / wall:.1f} | "
          f"{percentile(latencies, 0.5):.2f} | {percentile(latencies, 0.9):.2f} | {percentile(latencies, 0.99):.2f} | "
          f"{max(latencies):.2f} | {alone:.2f} |")
    print(f"answers equal to their seed's answer alone: {done - len(wrong)} of {done}; failed requests: {len(errors)}; "
          f"server exit status after SIGTERM: {status}")
    for e in errors[:5]:
        print("  " + e)
    sys.exit(0 if not wrong and not errors and done == a.requests and status == 0 else 1)


if __name__ == "__main__":
    main()
