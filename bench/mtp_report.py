#!/usr/bin/env python3
"""Markdown summary of a multi-token decode CSV written by tests/gpu/run.sh (mtp.csv).

usage: python3 bench/mtp_report.py bench/results/mtp-h100.csv > bench/results/mtp-h100.md

For each state dtype and batch size: the time of a T-token step without token slots against a
one-token step (issue target: <= 1.25x for T <= 4 at N >= 64), and with a snapshot per token the
achieved bandwidth as a share of the copy of the same bytes (target: within 10%).
"""
import csv
import sys


def main(path):
    header, rows = [], []
    with open(path) as f:
        for line in f:
            (header if line.startswith("#") else rows).append(line)
    table = list(csv.DictReader(rows))
    gdn = [r for r in table if r["impl"] == "gdn"]
    key = lambda r: (r["state_dtype"], int(r["N"]), int(r["T"]), r["token_slots"])
    by = {key(r): r for r in gdn}
    print("# Multi-token decode on the GPU (gdn bench --tokens T)\n")
    for h in header:
        print("- " + h.lstrip("# ").strip())
    shape = gdn[0]
    print(f"- shape {shape['shape']} (H={shape['H']} HV={shape['HV']} K={shape['K']} V={shape['V']}), "
          "bf16 activations, vk layout; median of CUDA-graph replays\n")
    ts = sorted({int(r["T"]) for r in gdn})
    for state in sorted({r["state_dtype"] for r in gdn}):
        ns = sorted({int(r["N"]) for r in gdn if r["state_dtype"] == state})
        print(f"## {state} state: time of a T-token step / one-token step (no token slots)\n")
        print("| N | T=1 us | " + " | ".join(f"T={t}" for t in ts if t > 1) + " |")
        print("|---:|---:|" + "---:|" * (len(ts) - 1))
        for n in ns:
            one = by.get((state, n, 1, "no"))
            if not one:
                continue
            cells = []
            for t in ts:
                r = by.get((state, n, t, "no"))
                if t > 1:
                    cells.append(f"{float(r['median_us']) / float(one['median_us']):.2f}x" if r else "—")
            print(f"| {n} | {float(one['median_us']):.2f} | " + " | ".join(cells) + " |")
        print(f"\n## {state} state, a snapshot per token: % of the copy bandwidth for the same bytes\n")
        print("| N | " + " | ".join(f"T={t}" for t in ts if t > 1) + " |")
        print("|---:|" + "---:|" * (len(ts) - 1))
        for n in ns:
            cells = []
            for t in ts:
                if t == 1:
                    continue
                r = by.get((state, n, t, "yes"))
                cells.append(f"{float(r['pct_of_copy']):.0f}% ({float(r['median_us']):.1f} us)" if r else "—")
            print(f"| {n} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
