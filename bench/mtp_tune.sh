#!/usr/bin/env bash
# One GPU call for the multi-token kernel (issue 10): correctness of every configuration first
# (the C suite's multi-token matrix per configuration, compute-sanitizer memcheck and racecheck
# over it), then timings of every configuration beside the library's choice (and, when given, a
# base build's gdn in the same run) for T in 2, 3, 4, 8 and N in 1, 16, 64, 256, qwen3-next.
# Each step's output lands in OUTDIR as it runs, so a run cut short keeps what it did.
#   bench/mtp_tune.sh OUTDIR [BASE_GDN]
# Uses build/ as it is (GDN_PREBUILT builds carried from the development machine).
# Environment: MTP_CONFIGS=-1,5 the timed configurations (default all), MTP_TOKENS, MTP_NS,
# MTP_TEST_S / MTP_SANITIZE_S the steps' limits (0: no sanitizers), GDN_TEST_CONFIGS the tested
# configurations.
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$1 base=${2:-}
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh # (the script has cd to the repository root)

step info 20 build/gdn info
step tests-configs ${MTP_TEST_S:-200} build/test_gdn decode/cuda_multi_token_configs decode/cuda_all vectors/cuda cuda/ -huge
if [ "${MTP_SANITIZE_S:-120}" != 0 ]; then # 0: leave the sanitizers to another call
    step memcheck ${MTP_SANITIZE_S:-120} "$sanitizer" --tool memcheck --error-exitcode 1 build/test_gdn decode/cuda_multi_token_configs
    step racecheck ${MTP_SANITIZE_S:-120} "$sanitizer" --tool racecheck --error-exitcode 1 build/test_gdn decode/cuda_multi_token_configs
fi

ns=${MTP_NS:-1,16,64,256}
configs=${MTP_CONFIGS:--1,$(seq -s, 0 $(($(build/gdn bench --help | sed -n 's/.*multi-token: 0\.\.\([0-9]*\).*/\1/p') + 0)))}
{ echo "$header"; echo "shape,H,HV,K,V,state_dtype,N,T,token_slots,impl,median_us,gbps,pct_of_copy"; } >"$out/configs.csv"
for state in f32 bf16; do
    for T in ${MTP_TOKENS:-2 3 4 8}; do
        for slots in "" --token-slots; do
            [ -n "$slots" ] && [ "$T" -gt 4 ] && continue
            timeout 120 build/gdn bench --backend cuda --shape qwen3-next --state "$state" --tokens "$T" $slots \
                --n "$ns" --reps 20 --csv --configs "$configs" | tail -n +2 >>"$out/configs.csv" || status=1
            if [ -n "$base" ]; then
                timeout 60 "$base" bench --backend cuda --shape qwen3-next --state "$state" --tokens "$T" $slots \
                    --n "$ns" --reps 20 --csv | tail -n +2 | grep ",gdn," | sed 's/,gdn,/,base,/' \
                    >>"$out/configs.csv" || status=1
            fi
        done
    done
    # the one-token time of the same run, for the T-token / one-token ratio
    timeout 60 build/gdn bench --backend cuda --shape qwen3-next --state "$state" --n "$ns" --reps 20 --csv |
        tail -n +2 | grep ",gdn," | sed 's/^\([^,]*,[^,]*,[^,]*,[^,]*,[^,]*,[^,]*,[^,]*\),/\1,1,no,/' \
        >>"$out/configs.csv" || status=1
done
# the table to read: per state/T/slots/N, each impl's time
python3 - "$out/configs.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith('#'))]
t = collections.defaultdict(dict)
impls = []
for r in rows:
    t[(r['state_dtype'], int(r['T']), r['token_slots'], int(r['N']))][r['impl']] = float(r['median_us'])
    if r['impl'] not in impls: impls.append(r['impl'])
print('state T slots N ' + ' '.join(impls))
for k in sorted(t):
    print(*k, ' '.join('%.2f' % t[k].get(i, float('nan')) for i in impls))
PY
exit $status
