#!/usr/bin/env python3
"""Summary of a bench/cpu_bf16_ratio.sh CSV: per commit, shape and N the medians over rounds and
the f32/bf16 time ratio; then every commit against the first one named on the command line,
round by round (the rounds are interleaved, so a slow spell of a shared VM slows both sides of a
pair): the median of the per-round time ratios and in how many rounds it was faster.
    bench/cpu_ratio_summary.py RESULT.csv"""
import collections
import csv
import statistics
import sys

path = sys.argv[1]
lines = open(path).read().splitlines()
command = next((l for l in lines if l.startswith("# command:")), "")
rows = [r for r in csv.DictReader(l for l in lines if not l.startswith("#"))]
t = {}
for r in rows:
    if r["impl"] == "gdn":
        t[(r["commit"], r["shape"], int(r["N"]), r["state_dtype"], int(r["round"]))] = float(r["median_us"])
named = command.split("--")[0].split()[3:] if command else []
commits = [c for c in named if any(k[0] == c for k in t)] or sorted({k[0] for k in t})
cases = sorted({(k[1], k[2]) for k in t})
rounds = sorted({k[4] for k in t})

print("commit shape N: f32 us, bf16 us (medians over rounds), f32/bf16 time ratio (of the medians; per-round range)")
for shape, n in cases:
    for c in commits:
        f = {r: t[(c, shape, n, "f32", r)] for r in rounds if (c, shape, n, "f32", r) in t}
        b = {r: t[(c, shape, n, "bf16", r)] for r in rounds if (c, shape, n, "bf16", r) in t}
        if not f or not b:
            continue
        per_round = sorted(f[r] / b[r] for r in f if r in b)
        mf, mb = statistics.median(f.values()), statistics.median(b.values())
        print("%s %s %d: f32 %.0f, bf16 %.0f, ratio %.2f (rounds %.2f-%.2f)" %
              (c, shape, n, mf, mb, mf / mb, per_round[0], per_round[-1]))

if len(commits) > 1:
    base = commits[0]
    print("\nagainst %s, round by round (time ratio: median over rounds, rounds faster, range)" % base)
    for shape, n in cases:
        for state in ("f32", "bf16"):
            for c in commits[1:]:
                rs = [t[(c, shape, n, state, r)] / t[(base, shape, n, state, r)] for r in rounds
                      if (c, shape, n, state, r) in t and (base, shape, n, state, r) in t]
                if rs:
                    print("%s %s %d %s: %.3f, faster in %d of %d (%.2f-%.2f)" %
                          (c, shape, n, state, statistics.median(rs), sum(x < 1 for x in rs), len(rs),
                           min(rs), max(rs)))
