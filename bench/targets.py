#!/usr/bin/env python3
"""The issues' speed targets, checked against the side by side's CSVs (no GPU needed).

    bench/targets.py [--decode decode-h200.csv] [--mtp mtp-h200.csv] [--prefill prefill-h200.csv]

Issue 9 (decode-*.csv of peer_bench.py), issue 10 (mtp-*.csv of mtp_bench.py), issue 13
(prefill-*.csv of prefill_bench.py). Prints every point that misses, and per target how many of
the measured points meet it. A point a peer did not run is counted against the peers that did.
A miss whose target time lies under the time of a copy of the same bytes (the `copy` rows of the
same run) says so: a call that reads and writes every state byte once cannot beat that copy.
"""
import argparse
import collections
import csv


def rows_of(path):
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


class Tally:
    def __init__(self, name):
        self.name, self.met, self.total, self.misses = name, 0, 0, []

    def add(self, ok, what):
        self.total += 1
        self.met += bool(ok)
        if not ok:
            self.misses.append(what)

    def report(self):
        print(f"- {self.name}: {self.met} of {self.total} points met")
        for m in self.misses:
            print(f"    miss: {m}")


def floor_note(target_us, impls):
    """' (target X us < copy Y us)' when the target time is under the same run's copy, else ''."""
    c = impls.get("copy")
    if c is None:
        return ""
    copy_us = float(c["median_us"])
    return f" (target {target_us:.2f} us < copy {copy_us:.2f} us)" if target_us < copy_us else ""


def decode(path):
    t = collections.defaultdict(dict)
    for r in rows_of(path):
        t[(r["shape"], r["state_dtype"], int(r["N"]))][r["impl"]] = r
    every = Tally("issue 9: gdn <= the fastest peer (every shape, state, N)")
    bf16 = Tally("issue 9: bf16 N >= 64, FlashInfer time / gdn time >= 1.10")
    f32 = Tally("issue 9: f32 N >= 64, gdn >= 4.0 TB/s")
    n1 = Tally("issue 9: qwen3-next N = 1, f32 <= 3.5 us, bf16 <= 3.0 us")
    for (shape, state, n), impls in sorted(t.items()):
        if "gdn" not in impls:
            continue
        g = float(impls["gdn"]["median_us"])
        peers = {p: float(impls[p]["median_us"]) for p in ("fla", "flashinfer") if p in impls}
        if peers:
            best = min(peers, key=peers.get)
            every.add(g <= peers[best], f"{shape} {state} N={n}: gdn {g:.2f} us, {best} {peers[best]:.2f} "
                                        f"({peers[best] / g:.3f}x)")
        if state == "bf16" and n >= 64 and "flashinfer" in peers:
            bf16.add(peers["flashinfer"] / g >= 1.10, f"{shape} N={n}: {peers['flashinfer'] / g:.3f}x" +
                     floor_note(peers["flashinfer"] / 1.10, impls))
        if state == "f32" and n >= 64:
            gbps = float(impls["gdn"]["gbps"])
            f32.add(gbps >= 4000, f"{shape} N={n}: {gbps / 1000:.2f} TB/s" +
                    floor_note(g * gbps / 4000, impls))
        if shape == "qwen3-next" and n == 1:
            n1.add(g <= (3.5 if state == "f32" else 3.0), f"{state}: {g:.2f} us")
    for x in (every, bf16, f32, n1):
        x.report()


def mtp(path):
    t = collections.defaultdict(dict)
    for r in rows_of(path):
        impl = r["impl"] + ("+slots" if r["token_slots"] == "yes" and r["impl"] == "gdn" else "")
        if r["token_slots"] == "yes" and impl != "gdn+slots":
            continue  # (the copy of the slots' bytes)
        t[(r["state_dtype"], int(r["N"]), int(r["T"]))][impl] = r
    f32 = Tally("issue 10: f32, T in 2, 3, 4, 8: gdn <= 0.90x the fastest peer")
    fi = Tally("issue 10: bf16, gdn <= FlashInfer's bf16 time")
    fla = Tally("issue 10: bf16 N >= 64, gdn <= 0.60x FLA's f32 time")
    slots = Tally("issue 10: token slots, N >= 64: >= 90% of the copy limit")
    for (state, n, T), impls in sorted(t.items()):
        if "gdn" not in impls or T < 2:
            continue
        g = float(impls["gdn"]["median_us"])
        if state == "f32":
            peers = {p: float(impls[p]["median_us"]) for p in ("fla", "flashinfer") if p in impls}
            if peers:
                best = min(peers, key=peers.get)
                f32.add(g <= 0.90 * peers[best], f"N={n} T={T}: gdn {g:.2f}, {best} {peers[best]:.2f} "
                                                 f"({g / peers[best]:.3f}x)" + floor_note(0.90 * peers[best], impls))
        else:
            if "flashinfer" in impls:
                p = float(impls["flashinfer"]["median_us"])
                fi.add(g <= p, f"N={n} T={T}: gdn {g:.2f}, flashinfer {p:.2f} ({g / p:.3f}x)")
            f = t.get(("f32", n, T), {}).get("fla")
            if n >= 64 and f:
                p = float(f["median_us"])
                fla.add(g <= 0.60 * p, f"N={n} T={T}: gdn {g:.2f}, fla f32 {p:.2f} ({g / p:.3f}x)")
        s = impls.get("gdn+slots")
        if s and n >= 64:
            slots.add(float(s["pct_of_copy"]) >= 90, f"{state} N={n} T={T}: {float(s['pct_of_copy']):.1f}%")
    for x in (f32, fi, fla, slots):
        x.report()


def prefill(path):
    t = collections.defaultdict(dict)
    for r in rows_of(path):
        t[(r["case"], r["shape"], r["state_dtype"])][r["impl"]] = float(r["median_us"])
    peer = Tally("issue 13: gdn <= the fastest peer (every case)")
    split = Tally("issue 13: mixed <= split")
    for (case, shape, state), impls in sorted(t.items()):
        if "gdn" not in impls:
            continue
        g = impls["gdn"]
        peers = {p: impls[p] for p in ("fla", "flashinfer") if p in impls}
        if peers:
            best = min(peers, key=peers.get)
            peer.add(g <= peers[best], f"{case} {shape} {state}: gdn {g:.1f}, {best} {peers[best]:.1f} "
                                       f"({g / peers[best]:.2f}x)")
        if case.startswith("mixed") and "split" in impls:
            split.add(g <= impls["split"], f"{case} {shape}: gdn {g:.1f}, split {impls['split']:.1f}")
    for x in (peer, split):
        x.report()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode")
    ap.add_argument("--mtp")
    ap.add_argument("--prefill")
    a = ap.parse_args()
    for path, fn in ((a.decode, decode), (a.mtp, mtp), (a.prefill, prefill)):
        if path:
            print(f"{path}:")
            fn(path)


if __name__ == "__main__":
    main()
