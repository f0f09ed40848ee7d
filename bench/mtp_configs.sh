#!/usr/bin/env bash
# A short GPU call for the multi-token kernel: the multi-token tests under every configuration,
# then chosen configurations timed beside the library's choice (qwen3-next, no token slots).
#   bench/mtp_configs.sh OUTDIR CONFIGS [TOKENS] [NS]     e.g. OUTDIR -1,4,5,6,7,8 "2 4 8" 16,64,256
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$1 configs=$2 tokens=${3:-2 4 8} ns=${4:-16,64,256}
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh
step tests-configs 150 build/test_gdn decode/cuda_multi_token_configs
{ echo "$header"; echo "shape,H,HV,K,V,state_dtype,N,T,token_slots,impl,median_us,gbps,pct_of_copy"; } >"$out/configs.csv"
for state in f32 bf16; do
    for T in $tokens; do
        timeout 120 build/gdn bench --backend cuda --shape qwen3-next --state "$state" --tokens "$T" --n "$ns" \
            --reps 20 --csv --configs "$configs" | tail -n +2 >>"$out/configs.csv" || status=1
    done
done
grep -v '^#' "$out/configs.csv" | cut -d, -f6,7,8,10,11 | column -t -s, | awk '{printf "%s ", $0; if (NR % 7 == 0) print ""}'
echo
exit $status
