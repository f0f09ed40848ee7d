#!/usr/bin/env bash
# One GPU call for multi-token experiments, in three parts (bench/NOTES.md, 2026-12-07):
#  1. the GPU tests of TEST_GDN: the multi-token configuration tests (GDN_TEST_CONFIGS picks
#     configurations, e.g. new ones), the cuda suite, the vectors, in TEST_SECONDS (240);
#  2. a sweep of SWEEP_GDN's multi-token configurations SWEEP_CONFIGS (default: the library's
#     choice, r4x4, r4x4s3, r8x4s3l8, r8x4s3, r8x1l8) at SWEEP_TOKENS (2 3 4), f32 and bf16,
#     N = SWEEP_NS (1, 16, 64, 256), SWEEP_ROUNDS (2) interleaved rounds. At 7156642 the
#     configurations 14-20 took every token's dot products at once; they lost and were removed
#     (bench/results/h100-2026-12-07-7156642-at-once/, bench/NOTES.md);
#  3. the cache hints of f1be7f9: an interleaved A/B of the gdn builds named on the command line
#     (main, GDN_MT_LOAD_HINT=1, GDN_MT_STORE_HINT=0 (removed since), both) at T = 2..4 (bench/ab_builds.sh),
#     cut off after AB_SECONDS.
#   bench/mtp_hints_ab.sh OUTDIR TEST_GDN SWEEP_GDN name=GDN name=GDN ...
# Writes OUTDIR/tests.log, OUTDIR/ab/ab.csv and ab.txt (the table), OUTDIR/configs.csv and
# configs.txt (each configuration's median over the rounds against the library's choice).
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$1 test_gdn=$2 sweep_gdn=$3
shift 3
mkdir -p "$out/ab"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh
step tests ${TEST_SECONDS:-240} "$test_gdn" decode/cuda_multi_token_configs decode/cuda_all vectors/cuda cuda/ -huge
{ echo "$header"; echo "round,shape,H,HV,K,V,state_dtype,N,T,token_slots,impl,median_us,gbps,pct_of_copy"; } >"$out/configs.csv"
for round in $(seq 1 "${SWEEP_ROUNDS:-2}"); do
    for state in f32 bf16; do
        for T in ${SWEEP_TOKENS:-2 3 4}; do
            timeout 90 "$sweep_gdn" bench --backend cuda --shape qwen3-next --state "$state" --tokens "$T" \
                --n "${SWEEP_NS:-1,16,64,256}" --reps 20 --csv --configs "${SWEEP_CONFIGS:--1,4,6,10,5,13}" |
                tail -n +2 | sed "s/^/$round,/" >>"$out/configs.csv" || status=1
        done
    done
done
python3 - "$out/configs.csv" >"$out/configs.txt" <<'PY'
import collections, csv, statistics, sys
rows = list(csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith("#")))
t, names = collections.defaultdict(lambda: collections.defaultdict(list)), []
for r in rows:
    t[(r["state_dtype"], int(r["T"]), int(r["N"]))][r["impl"]].append(float(r["median_us"]))
    if r["impl"] not in names:
        names.append(r["impl"])
print("state T N " + " ".join(names) + "   (each over " + names[0] + ")")
for k in sorted(t):
    med = {n: statistics.median(v) for n, v in t[k].items()}
    base = med.get(names[0])
    print(*k, " ".join("%.2f" % med.get(n, float("nan")) for n in names),
          "  ", " ".join("%.3f" % (med[n] / base) if base and n in med else "nan" for n in names[1:]))
PY
cat "$out/configs.txt"
# the A/B last, cut off after AB_SECONDS (default 240)
if [ "$#" -gt 0 ]; then
    AB_TOKENS=${AB_TOKENS:-2 3 4} AB_SLOTS=${AB_SLOTS:-0} AB_NS=${AB_NS:-1,16,64,256} \
        timeout "${AB_SECONDS:-240}" bench/ab_builds.sh "$out/ab" "$@" >"$out/ab/ab.txt" 2>&1 || status=1
    cat "$out/ab/ab.txt"
fi
exit $status
