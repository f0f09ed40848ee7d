#!/usr/bin/env bash
# The cpu backend's instruction-set variants (GDN_CPU_ISA) beside an older commit's build,
# interleaved ROUNDS times so that a noisy shared machine slows every variant alike:
#   bench/cpu_isa_ab.sh OUT.csv BASE_COMMIT [-- gdn bench arguments]
# (default arguments: --n 1,4,16,64; shapes qwen3-next and contest, f32 and bf16, vk)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 base=$2
shift 2
[ "${1:-}" = "--" ] && shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--n 1,4,16,64)
rounds=${ROUNDS:-3}
. bench/cpu_scratch.sh "$base"
make -C "$scratch/wt" -s GDN_CUDA=0 BUILD="$scratch/base" "$scratch/base/gdn" >/dev/null
make -s GDN_CUDA=0 BUILD="$scratch/head" "$scratch/head/gdn" >/dev/null
isas=$("$scratch/head/gdn" info | sed -n 's/.*(of: \(.*\); GDN_CPU_ISA.*/\1/p')
{
    echo "$(cpu_header); date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD), base $base"
    echo "# command: bench/cpu_isa_ab.sh $out $base -- ${args[*]} (ROUNDS=$rounds, interleaved)"
    echo "build,round,shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy"
    for r in $(seq "$rounds"); do
        for shape in qwen3-next contest; do
            for state in f32 bf16; do
                "$scratch/base/gdn" bench --backend cpu --shape "$shape" --state "$state" --csv "${args[@]}" |
                    tail -n +2 | sed "s/^/base-$base,$r,/"
                for isa in $isas; do
                    GDN_CPU_ISA=$isa "$scratch/head/gdn" bench --backend cpu --shape "$shape" --state "$state" --csv \
                        "${args[@]}" | tail -n +2 | grep -v ",copy," | sed "s/^/$isa,$r,/"
                done
            done
        done
    done
} >"$out"
python3 - "$out" <<'PY'
import collections, csv, statistics, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith("#"))]
t = collections.defaultdict(list)
for r in rows:
    t[(r["shape"], r["state_dtype"], int(r["N"]), "copy" if r["impl"] == "copy" else r["build"])].append(float(r["gbps"]))
builds = sorted({k[3] for k in t}, key=lambda b: (b != "copy", b))
print("median GB/s over rounds: shape state N " + " ".join(builds))
for key in sorted({k[:3] for k in t}):
    print(*key, " ".join("%.1f" % statistics.median(t[key + (b,)]) if key + (b,) in t else "-" for b in builds))
PY
