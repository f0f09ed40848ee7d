#!/usr/bin/env bash
# A/B of the cpu backend across commits, interleaved so that a noisy (shared) machine slows
# every build alike: builds each commit's `gdn` (no CUDA) in a scratch worktree, then runs
# `gdn bench --backend cpu` for each layout and state dtype, ROUNDS times in turn.
#   bench/cpu_ab.sh OUT.csv COMMIT... [-- gdn bench arguments]   (default: --shape qwen3-next --n 64)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
commits=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do commits+=("$1"); shift; done
[ $# -gt 0 ] && shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--shape qwen3-next --n 64)
rounds=${ROUNDS:-3}
. bench/cpu_scratch.sh HEAD # (a sourced file without arguments sees this script's $@ as its own)
for c in "${commits[@]}"; do
    build_at "$c" gdn
done
{
    echo "$(cpu_header); date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD)"
    echo "# command: bench/cpu_ab.sh $out ${commits[*]} -- ${args[*]} (ROUNDS=$rounds, interleaved)"
    echo "commit,round,layout,shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy"
    for r in $(seq "$rounds"); do
        for c in "${commits[@]}"; do
            for layout in vk kv; do
                for state in f32 bf16; do
                    "$scratch/build-$c/gdn" bench --backend cpu --layout "$layout" --state "$state" --csv "${args[@]}" |
                        grep ",gdn," | sed "s/^/$c,$r,$layout,/"
                done
            done
        done
    done
} >"$out"
cat "$out"
