#!/usr/bin/env bash
# GPU test and benchmark run, for the GPU machine: builds gdn, runs the C test suite with the
# cuda backend, `gdn check --backend cuda` over the full matrix and the reference vectors, a
# 4096-step run, `gdn bench` on every SPEC shape with f32 and bf16 state, and multi-token
# decode timings (mtp.csv).
#
#   tests/gpu/run.sh [OUTDIR]      (default: bench/results/gpu-<date>)
#
# Needs the vectors: GDN_VECTORS=<dir> (the device does not see ../shared). Exit status is
# non-zero when any test or check failed. Everything printed also lands in OUTDIR.
set -u -o pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/results/gpu-$(date -u +%Y%m%d)-${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}}
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
header="# device: ${device:-unknown}; date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $commit"
status=0

step() { # name, command...: runs it, keeps its output in $out/name.log, remembers failure
    local name=$1; shift
    echo "== $name: $*"
    { echo "$header"; echo "# command: $*"; } >"$out/$name.log"
    "$@" 2>&1 | tee -a "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "# exit status: $rc" >>"$out/$name.log"
    [ "$rc" -eq 0 ] || { echo "!! $name failed ($rc)"; status=1; }
}

make -j"$(nproc)" all >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
step info build/gdn info
step tests build/test_gdn
step check build/gdn check --backend cuda
step steps build/gdn check --backend cuda --steps 4096
{ echo "$header"; } >"$out/bench.csv"
for shape in qwen3-next qwen3.5-397b qwen3.5-27b contest; do
    for state in f32 bf16; do
        build/gdn bench --backend cuda --shape "$shape" --state "$state" --csv | tail -n +2 >>"$out/bench.csv" ||
            status=1
    done
done
sed -i '2i shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy' "$out/bench.csv"
# Multi-token decode (SPEC op 2): T tokens per sequence, with and without a snapshot per token.
{ echo "$header"; echo "shape,H,HV,K,V,state_dtype,N,T,token_slots,impl,median_us,gbps,pct_of_copy"; } >"$out/mtp.csv"
for state in f32 bf16; do
    for t in 1 2 3 4 8; do
        for slots in "" --token-slots; do
            [ "$t" = 1 ] && [ -n "$slots" ] && continue
            build/gdn bench --backend cuda --shape qwen3-next --state "$state" --tokens "$t" $slots --n 1,16,64,256 \
                --reps 20 --csv | tail -n +2 | awk -F, -v t="$t" 'NF == 11 { $8 = t ",no," $8 } 1' OFS=, \
                >>"$out/mtp.csv" || status=1
        done
    done
done
grep -v "^#" "$out/bench.csv" | tr , "\t"
echo "results in $out (status $status)"
exit $status
