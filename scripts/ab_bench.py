#!/usr/bin/env python3
"""A/B timing of two or more builds of the crate's bench example, interleaved finely.

    python3 scripts/ab_bench.py ROUNDS BENCH_BINARY_A BENCH_BINARY_B [...]

Build each variant with `cargo build --release --example bench` and copy
`target/release/examples/bench` aside (e.g. `cp target/release/examples/bench /tmp/bench_a`).
Each binary runs as one `bench --stdin` process; every round sends each request to every
binary in turn (the order flipped every other round, a 0.1 s pause between), so a slow spell
of a shared machine lands on all of them alike. Prints each request's median over all rounds
and its ratio to the first binary's. Needs no Python packages.
"""
import json
import statistics
import subprocess
import sys
import time

REQUESTS = ["forward 1 10", "forward 8 3", "forward 32 1", "e2e 10"]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, bins = int(sys.argv[1]), sys.argv[2:]
    procs = [subprocess.Popen([b, "--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for b in bins]
    for p in procs:
        json.loads(p.stdout.readline())  # the cold-start line
    # Keyed by position, so the same binary may be given twice (an A/A check).
    times = {(i, q): [] for i in range(len(bins)) for q in REQUESTS}
    for r in range(rounds):
        for q in REQUESTS:
            order = list(enumerate(zip(bins, procs)))
            if r % 2:
                order.reverse()
            for i, (b, p) in order:
                time.sleep(0.1)
                p.stdin.write(q + "\n")
                p.stdin.flush()
                answer = json.loads(p.stdout.readline())
                if "error" in answer:
                    sys.exit(f"{b}: {answer['error']}")
                times[(i, q)].extend(answer["times_ms"])
    for q in REQUESTS:
        base = statistics.median(times[(0, q)])
        cells = []
        for i, b in enumerate(bins):
            med = statistics.median(times[(i, q)])
            cells.append(f"{b.rsplit('/', 1)[-1]} {med:.2f} ms ({med / base:.3f})")
        print(f"{q:14s} " + "  ".join(cells))
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)


if __name__ == "__main__":
    main()
