#!/usr/bin/env bash
# Issue 14's target "bf16 state >= 1.6x gdn's own f32 throughput": `gdn bench --backend cpu` of
# each commit's build, f32 and bf16 state (vk), interleaved ROUNDS times (commit by commit, state
# by state, the order of the states swapped every round) so that a noisy shared machine slows
# every build and dtype alike; then per commit and N the medians and the f32/bf16 time ratio.
#   bench/cpu_bf16_ratio.sh OUT.csv COMMIT... [-- gdn bench arguments]
# (default arguments: --shape qwen3-next --n 16,64 --reps 21; ROUNDS=7)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
commits=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do commits+=("$1"); shift; done
[ $# -gt 0 ] && shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--shape qwen3-next --n 16,64 --reps 21)
rounds=${ROUNDS:-7}
. bench/cpu_scratch.sh HEAD # (a sourced file without arguments sees this script's $@ as its own)
for c in "${commits[@]}"; do
    build_at "$c" gdn
done
{
    echo "$(cpu_header); isa: $("$scratch/build-${commits[0]}/gdn" info | sed -n 's/^cpu backend instruction set: \([^ ]*\).*/\1/p'); date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD)"
    echo "# command: bench/cpu_bf16_ratio.sh $out ${commits[*]} -- ${args[*]} (ROUNDS=$rounds, interleaved)"
    echo "commit,round,shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy"
    for r in $(seq "$rounds"); do
        states="f32 bf16"
        [ $((r % 2)) -eq 0 ] && states="bf16 f32"
        for c in "${commits[@]}"; do
            for state in $states; do
                "$scratch/build-$c/gdn" bench --backend cpu --state "$state" --csv "${args[@]}" |
                    tail -n +2 | sed "s/^/$c,$r,/"
            done
        done
    done
} >"$out"
python3 bench/cpu_ratio_summary.py "$out"
