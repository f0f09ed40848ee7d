#!/usr/bin/env bash
# gdn's cpu backend beside ggml_gated_delta_net and a memcpy of the same bytes, same threads,
# interleaved ROUNDS times (a shared VM is noisy): qwen3-next and contest, N = 1, 4, 16, 64, f32
# state (and bf16 for gdn alone). Writes bench/results/cpu-ggml.{csv,md}.
#   bench/peers/ggml_bench/build.sh && bench/peers/ggml_bench/run.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
threads=${1:-2}
rounds=${ROUNDS:-3}
reps=${REPS:-20}
make -s all >/dev/null
bench=build/ggml/ggml_gdn_bench
[ -x "$bench" ] || { echo "run bench/peers/ggml_bench/build.sh first" >&2; exit 1; }
raw=$(mktemp)
for r in $(seq "$rounds"); do
    for shape in "qwen3-next 16 32" "contest 4 8"; do
        set -- $shape
        for n in 1 4 16 64; do
            "$bench" "$2" "$3" "$n" "$threads" "$reps" | sed "s/^/$1,f32,/" >>"$raw"
            for state in f32 bf16; do
                GDN_NUM_THREADS=$threads build/gdn bench --backend cpu --shape "$1" --state "$state" --n "$n" \
                    --reps "$reps" --csv | grep ",gdn," | cut -d, -f1,6,7,8,9,10 >>"$raw"
            done
        done
    done
done
out=bench/results/cpu-ggml
{
    echo "# device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $threads threads; date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD); gdn isa: $(build/gdn info | sed -n 's/cpu backend instruction set: \([a-z0-9]*\).*/\1/p'); ggml from llama-cpp-python ${LLAMA_CPP_PYTHON:-0.3.36} (-O3 -march=native); $rounds interleaved rounds, median"
    echo "shape,state_dtype,N,impl,median_us,gbps"
    python3 - "$raw" <<'PY'
import collections, statistics, sys
t = collections.defaultdict(list)
for line in open(sys.argv[1]):
    shape, state, n, impl, us, gbps = line.strip().split(",")
    t[(shape, state, int(n), impl)].append((float(us), float(gbps)))
for key in sorted(t, key=lambda k: (k[0], k[1], k[2], k[3])):
    us = statistics.median(x[0] for x in t[key]); gb = statistics.median(x[1] for x in t[key])
    print(f"{key[0]},{key[1]},{key[2]},{key[3]},{us:.1f},{gb:.1f}")
PY
} >"$out.csv"
python3 - "$out.csv" >"$out.md" <<'PY'
import csv, sys
lines = open(sys.argv[1]).read().splitlines()
rows = list(csv.DictReader(lines[1:]))
get = {(r["shape"], r["state_dtype"], int(r["N"]), r["impl"]): r for r in rows}
print("# gdn cpu decode beside ggml_gated_delta_net\n")
print(lines[0].lstrip("# ") + "\n")
print("What each call includes: gdn: gate (softplus, exp), beta (sigmoid), q/k l2-norm and scale, state read and "
      "written in place in a slot-indexed pool, rotating buffer sets (64 MiB). ggml: g and beta precomputed, q/k "
      "taken as given (llama.cpp normalises them in separate ops), the state read from one tensor and the new "
      "state written out of place into the op's output (llama.cpp copies it back with another op). ggml and "
      "memcpy rotate through buffer sets of 64 MiB in all, as gdn does, so every side reads its state from "
      "the same level of memory; `ggml one set` is the op on the same tensors every call (the state then "
      "stays in cache where it fits, as in the runs before 2026-12-06 21:30). memcpy: the state bytes copied "
      "once on the same threads.\n")
print("| shape | N | ggml us | gdn f32 us | gdn/ggml time | ggml one set us | gdn/ggml one set | gdn f32 GB/s | memcpy GB/s | gdn % of memcpy | gdn bf16 us | bf16 speed-up over f32 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for shape in ("qwen3-next", "contest"):
    for n in (1, 4, 16, 64):
        g = get.get((shape, "f32", n, "ggml")); d = get.get((shape, "f32", n, "gdn"))
        m = get.get((shape, "f32", n, "memcpy")); b = get.get((shape, "bf16", n, "gdn"))
        if not (g and d and m and b):
            continue
        gu, du, bu = float(g["median_us"]), float(d["median_us"]), float(b["median_us"])
        c = get.get((shape, "f32", n, "ggml-cached"))
        cached = f"{float(c['median_us']):.0f} | {du/float(c['median_us']):.2f}" if c else "— | —"
        print(f"| {shape} | {n} | {gu:.0f} | {du:.0f} | {du/gu:.2f} | {cached} | {float(d['gbps']):.1f} | {float(m['gbps']):.1f} | "
              f"{100*float(d['gbps'])/float(m['gbps']):.0f} | {bu:.0f} | {du/bu:.2f} |")
PY
rm -f "$raw"
cat "$out.md"
