#!/usr/bin/env bash
# Why does a T = 3 multi-token call cost more than a T = 4 one with the same configuration
# (bench/NOTES.md, fourth 2026-12-06 session)? One short GPU call: the f32 state at every T from
# 2 to 8 under the library's choice and under r8x4s3l8 (config 10) and r4x4 (config 4), N = 64
# and 256, interleaved twice; then, where ncu is installed, the same kernel at T = 3 and T = 4
# (N = 64): DRAM throughput, achieved occupancy, the warp stall reasons.
#   bench/mtp_tokens_probe.sh OUTDIR [GDN]     (GDN: the gdn binary, default build/gdn)
# Writes OUTDIR/tokens.csv and OUTDIR/ncu-T3.log, ncu-T4.log.
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$1 gdn=${2:-build/gdn}
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh
{ echo "$header"; echo "round,shape,H,HV,K,V,state_dtype,N,T,token_slots,impl,median_us,gbps,pct_of_copy"; } >"$out/tokens.csv"
for round in 1 2; do
    for T in 2 3 4 5 6 7 8; do
        timeout 60 "$gdn" bench --backend cuda --shape qwen3-next --state f32 --tokens "$T" --n 64,256 \
            --reps 20 --csv --configs -1,4,10 | tail -n +2 | grep -v ',copy,' | sed "s/^/$round,/" >>"$out/tokens.csv" ||
            status=1
    done
done
# medians of the two rounds, one line per (N, impl), T across
python3 - "$out/tokens.csv" <<'PY'
import collections, csv, statistics, sys
lines = [l for l in open(sys.argv[1]) if not l.startswith("#")]
t = collections.defaultdict(list)
for r in csv.DictReader(lines):
    t[(int(r["N"]), r["impl"], int(r["T"]))].append(float(r["median_us"]))
Ts = sorted({k[2] for k in t})
print("N impl " + " ".join(f"T={T}" for T in Ts))
for n, impl in sorted({(k[0], k[1]) for k in t}):
    print(n, impl, " ".join(f"{statistics.median(t[(n, impl, T)]):.1f}" if (n, impl, T) in t else "-" for T in Ts))
PY
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
if [ -x "$ncu" ]; then
    for T in 3 4; do
        step "ncu-T$T" 150 "$ncu" --section SpeedOfLight --section Occupancy --section WarpStateStats \
            --section MemoryWorkloadAnalysis --kernel-name regex:decode_multi_token --launch-count 1 \
            --launch-skip 5 "$gdn" bench --backend cuda --shape qwen3-next --state f32 --tokens "$T" --n 64 \
            --reps 2 --configs 10
    done
fi
exit $status
