#!/usr/bin/env bash
# The cpu row kernels' cost with the state in L2 (bench/cpu_rows_l2.c: qwen3-next, N = 1, one
# thread, no buffer rotation), each commit's library against the same program, f32 and bf16,
# interleaved ROUNDS times; then per commit the median ns a row and bf16's speed-up over f32.
#   bench/cpu_rows_l2.sh OUT.csv COMMIT...      (ROUNDS=7; GDN_CPU_ISA is passed through)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
commits=("$@")
rounds=${ROUNDS:-7}
. bench/cpu_scratch.sh HEAD # (a sourced file without arguments sees this script's $@ as its own)
for c in "${commits[@]}"; do
    build_at "$c" libgdn.a
    cc -O2 -Iinclude bench/cpu_rows_l2.c "$scratch/build-$c/libgdn.a" -o "$scratch/rows-$c" -lpthread -lm
done
{
    echo "$(cpu_header); GDN_CPU_ISA=${GDN_CPU_ISA:-(best)}; date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD)"
    echo "# command: bench/cpu_rows_l2.sh $out ${commits[*]} (ROUNDS=$rounds, interleaved; N = 1, 1 thread, state in L2)"
    echo "commit,round,state_dtype,N,threads,best_us_per_call,ns_per_row_per_thread"
    for r in $(seq "$rounds"); do
        for c in "${commits[@]}"; do
            for state in f32 bf16; do
                "$scratch/rows-$c" 1 "$state" 1 | sed "s/^/$c,$r,/"
            done
        done
    done
} >"$out"
python3 - "$out" <<'PY'
import collections, csv, statistics, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith("#"))]
t = collections.defaultdict(list)
for r in rows:
    t[(r["commit"], r["state_dtype"])].append(float(r["ns_per_row_per_thread"]))
for c in dict.fromkeys(r["commit"] for r in rows):
    f, b = statistics.median(t[(c, "f32")]), statistics.median(t[(c, "bf16")])
    print("%s: f32 %.2f ns a row, bf16 %.2f ns a row (medians of %d rounds), bf16 speed-up %.2fx" %
          (c, f, b, len(t[(c, "f32")]), f / b))
PY
