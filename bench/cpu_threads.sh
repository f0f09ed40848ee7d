#!/usr/bin/env bash
# How the cpu backend's time scales from one thread to two (or THREADS), f32 and bf16 state,
# interleaved ROUNDS times on this build (`make all` first): is a state dtype bound by memory
# (scales with threads up to the bandwidth) or by each core's instructions?
#   bench/cpu_threads.sh OUT.csv [-- gdn bench arguments]
# (default arguments: --shape contest --n 16,64 --reps 21; ROUNDS=5, THREADS="1 2")
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
[ "${1:-}" = "--" ] && shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--shape contest --n 16,64 --reps 21)
rounds=${ROUNDS:-5}
threads=${THREADS:-1 2}
{
    echo "# device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; isa: $(build/gdn info | sed -n 's/^cpu backend instruction set: \([^ ]*\).*/\1/p'); date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD)"
    echo "# command: bench/cpu_threads.sh $out -- ${args[*]} (ROUNDS=$rounds, THREADS=$threads, interleaved)"
    echo "threads,round,shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy"
    for r in $(seq "$rounds"); do
        for t in $threads; do
            for state in f32 bf16; do
                GDN_NUM_THREADS=$t build/gdn bench --backend cpu --state "$state" --csv "${args[@]}" |
                    tail -n +2 | grep ",gdn," | sed "s/^/$t,$r,/"
            done
        done
    done
} >"$out"
python3 - "$out" <<'PY'
import collections, csv, statistics, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith("#"))]
t = {(int(r["threads"]), int(r["round"]), r["shape"], r["state_dtype"], int(r["N"])): float(r["median_us"]) for r in rows}
counts = sorted({k[0] for k in t})
print("shape state N: median us per thread count; speed-up of each count over %d thread(s), round by round (median, range)" % counts[0])
for shape, state, n in sorted({k[2:] for k in t}):
    med = {c: statistics.median(v for k, v in t.items() if k[0] == c and k[2:] == (shape, state, n)) for c in counts}
    line = "%s %s %d: %s" % (shape, state, n, ", ".join("%d: %.0f" % (c, med[c]) for c in counts))
    for c in counts[1:]:
        sp = sorted(t[(counts[0], r, shape, state, n)] / t[(c, r, shape, state, n)]
                    for r in {k[1] for k in t} if (c, r, shape, state, n) in t and (counts[0], r, shape, state, n) in t)
        line += "; x%d: %.2f (%.2f-%.2f)" % (c, statistics.median(sp), sp[0], sp[-1])
    print(line)
PY
