#!/usr/bin/env bash
# One GPU call for the one-token kernel (issue 9): correctness of every configuration first,
# then timings of every configuration beside the library's choice (and, when given, a base
# build's gdn in the same run), then the layer pattern with and without programmatic dependent
# launch. Each step's output lands in OUTDIR as it runs, so a run cut short keeps what it did.
#   bench/one_token_tune.sh OUTDIR [BASE_GDN]
# Uses build/ as it is (GDN_PREBUILT builds carried from the development machine).
# Environment: GDN_TEST_CONFIGS=12,13 limits the configuration tests to those; TUNE_CONFIGS=-1,2,13
# the timed configurations (default all); TUNE_SHAPES the shapes timed (default qwen3-next contest qwen3.5-397b); SKIP_PDL=1 no
# layer-pattern runs.
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$1 base=${2:-}
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh # (the script has cd to the repository root)

step info 20 build/gdn info
step tests-configs 300 build/test_gdn decode/cuda_one_token_configs decode/cuda_all vectors/cuda
step tests-cuda 150 build/test_gdn cuda/ -huge
step memcheck 150 "$sanitizer" --tool memcheck --error-exitcode 1 build/test_gdn cuda/bad cuda/checked cuda/four
step check-quick 90 build/gdn check --backend cuda --quick

configs=${TUNE_CONFIGS:--1,$(seq -s, 0 $(($(build/gdn bench --help | sed -n 's/.*one-token: 0\.\.\([0-9]*\).*/\1/p') + 0)))}
{ echo "$header"; echo "shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy"; } >"$out/configs.csv"
for shape in ${TUNE_SHAPES:-qwen3-next contest qwen3.5-397b}; do
    for state in f32 bf16; do
        timeout 120 build/gdn bench --backend cuda --shape "$shape" --state "$state" --reps 20 --csv \
            --configs "$configs" | tail -n +2 >>"$out/configs.csv" || status=1
        if [ -n "$base" ]; then
            timeout 60 "$base" bench --backend cuda --shape "$shape" --state "$state" --reps 20 --csv |
                tail -n +2 | grep ",gdn," | sed 's/,gdn,/,base,/' >>"$out/configs.csv" || status=1
        fi
    done
done
{ echo "$header"; } >"$out/pdl.csv"
pdl_runs=("qwen3-next f32" "qwen3-next bf16" "contest f32")
[ -n "${SKIP_PDL:-}" ] && pdl_runs=() # SKIP_PDL=1: no layer-pattern runs
for run in "${pdl_runs[@]}"; do
    set -- $run
    timeout 90 build/pdl_layers --shape "$1" --state "$2" | { [ "$1 $2" = "qwen3-next f32" ] && cat || tail -n +2; } \
        >>"$out/pdl.csv" || status=1
done
# the table to read: per shape/state/N, each impl's time
python3 - "$out/configs.csv" <<'EOF'
import csv, sys, collections
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith('#'))]
t = collections.defaultdict(dict)
impls = []
for r in rows:
    t[(r['shape'], r['state_dtype'], int(r['N']))][r['impl']] = float(r['median_us'])
    if r['impl'] not in impls: impls.append(r['impl'])
print('shape state N ' + ' '.join(impls))
for k in sorted(t):
    print(k[0], k[1], k[2], ' '.join('%.2f' % t[k].get(i, float('nan')) for i in impls))
EOF
cat "$out/pdl.csv"
exit $status
