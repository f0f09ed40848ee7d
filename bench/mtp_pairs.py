#!/usr/bin/env python3
"""Pairs of multi-token configurations in a configs.csv of bench/mtp_hints_ab.sh (or any
`gdn bench --configs` csv with a round column): each variant's median over the rounds against
its base's, then the fastest variant against the library's choice (gdn) and against the fastest
base configuration.
    bench/mtp_pairs.py CONFIGS.CSV SUFFIX BASE...
SUFFIX marks the variants (a variant is BASE + SUFFIX, e.g. r4x4 and r4x4a); BASE: the shapes
to pair, e.g. r4x4 r4x4s3 r8x4s3 r8x4s3l8 r8x1l8."""
import collections
import csv
import statistics
import sys

path, suffix, bases = sys.argv[1], sys.argv[2], sys.argv[3:]
lines = [l for l in open(path) if not l.startswith("#")]
t = collections.defaultdict(lambda: collections.defaultdict(list))
for r in csv.DictReader(lines):
    t[(r["state_dtype"], int(r["T"]), int(r["N"]))][r["impl"]].append(float(r["median_us"]))
print("# %s: each variant (%s) over its base, medians over the rounds" % (path, suffix))
print("state T N " + " ".join("%s%s/%s" % (b, suffix, b) for b in bases))
for k in sorted(t):
    m = {n: statistics.median(v) for n, v in t[k].items()}
    print(*k, " ".join("%.3f" % (m["gdn-" + b + suffix] / m["gdn-" + b]) for b in bases))
print()
print("# the fastest variant against the library's choice (gdn) and the fastest other configuration")
print("state T N fastest-variant us over-gdn over-best-other")
for k in sorted(t):
    m = {n: statistics.median(v) for n, v in t[k].items() if n != "copy"}
    var = min((v, n) for n, v in m.items() if n.endswith(suffix) and n != "gdn")
    other = min((v, n) for n, v in m.items() if not n.endswith(suffix) or n == "gdn")
    print(*k, var[1], "%.2f" % var[0], "%.3f" % (var[0] / m["gdn"]), "%.3f" % (var[0] / other[0]))
