#!/usr/bin/env python3
"""Per-kernel summary of an ncu source page exported as csv (bench/side_by_side.sh walk-ncu writes
NAME-sass.csv with `ncu -i REP --page source --csv --print-source sass`): for each kernel, the
executed instructions and the stall samples by opcode, and the hottest instructions by samples.

    python3 bench/ncu_sass_summary.py NAME-sass.csv [--per N] [--top 25]

--per N divides the executed counts by N (e.g. blocks x chunks x warps: instructions a warp a chunk).
"""
import argparse
import collections
import csv
import sys


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--per", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    kernels = collections.OrderedDict()
    kernel = None
    with open(args.csv, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0] == "Kernel Name":
                kernel = row[1]
                kernels.setdefault(kernel, {})
            elif kernel and len(row) > 5 and row[0] != "Address":
                kernels[kernel].setdefault(row[0], row)  # (a kernel's rows repeat per launch profiled)
    for name, rows in kernels.items():
        rows = list(rows.values())
        executed = sum(float(r[5] or 0) for r in rows)
        samples = sum(float(r[2] or 0) for r in rows)
        print(f"== {name}: {len(rows)} instructions, {executed:.0f} executed ({executed / args.per:.1f} "
              f"per --per), {samples:.0f} stall samples")
        by_exec, by_samples = collections.Counter(), collections.Counter()
        for r in rows:
            words = r[1].split()
            op = (words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else ""))
            op = op.split(".")[0]
            by_exec[op] += float(r[5] or 0)
            by_samples[op] += float(r[2] or 0)
        print(f"   {'opcode':10s} {'executed/per':>12s} {'% executed':>10s} {'% samples':>9s}")
        for op, n in by_exec.most_common(20):
            print(f"   {op:10s} {n / args.per:12.1f} {100 * n / executed:10.1f} {100 * by_samples[op] / max(samples, 1):9.1f}")
        print("   hottest instructions (samples, executed/per, sass):")
        for r in sorted(rows, key=lambda r: -float(r[2] or 0))[: args.top]:
            print(f"   {float(r[2] or 0):7.0f} {float(r[5] or 0) / args.per:8.2f}  {r[1][:90]}")


if __name__ == "__main__":
    main(sys.argv[1:])
