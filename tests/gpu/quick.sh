#!/usr/bin/env bash
# A short GPU run for when device time is scarce, most valuable step first (each step's log is
# written to OUTDIR as it runs, so a run cut short keeps what it finished):
#   1. the cuda tests of the C suite (decode/cuda_all, vectors/cuda, tests/test_cuda.c) but the
#      huge pool; 2. the >2^31-element pool test; 3. compute-sanitizer memcheck, racecheck and
#      initcheck over tests/test_cuda.c (every kernel: fast vk f32/bf16, generic vk and kv,
#      multi-token, varlen, bad indices, checked mode, graphs, four streams); 4. the Python
#      binding's GPU tests (FLA parity if .whl/fla was carried); 5. memcheck over the rest of
#      the cuda tests; 6. a quick `gdn check` and a few benchmark points.
#   tests/gpu/quick.sh OUTDIR
# GDN_PREBUILT=1 uses build/ as carried (built with the same nvcc from the same commit; give
# GDN_COMMIT) instead of running make.
set -u -o pipefail
cd "$(dirname "$0")/../.."
out=$1
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh # (the script has cd to the repository root)
if [ "${GDN_PREBUILT:-0}" != 1 ]; then
    make -j"$(nproc)" all >"$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
fi

step info 20 build/gdn info
step tests-cuda 150 build/test_gdn cuda -huge
step huge-pool 120 build/test_gdn huge
step memcheck 150 "$sanitizer" --tool memcheck --error-exitcode 1 build/test_gdn cuda/ -huge
step racecheck 150 "$sanitizer" --tool racecheck --error-exitcode 1 build/test_gdn cuda/bad cuda/checked
step initcheck 150 "$sanitizer" --tool initcheck --error-exitcode 1 build/test_gdn cuda/ -huge
if [ -d .whl/fla ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-fla \
        .whl/fla/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site-fla${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
step python-gpu 240 python3 tests/python/test_gpu.py
step memcheck-rest "${QUICK_MEMCHECK_REST_S:-300}" "$sanitizer" --tool memcheck --error-exitcode 1 build/test_gdn decode/cuda_all vectors/cuda
step check-quick 120 build/gdn check --backend cuda --quick
{ echo "$header"; echo "shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy"; } >"$out/bench.csv"
for shape in qwen3-next contest; do
    for state in f32 bf16; do
        timeout 60 build/gdn bench --backend cuda --shape "$shape" --state "$state" --n 1,16,64,1024 --reps 20 --csv |
            tail -n +2 >>"$out/bench.csv" || status=1
    done
done
# paged pools (issue 11): the same points with vLLM's page stride, to read beside the packed rows
for state in f32 bf16; do
    timeout 60 build/gdn bench --backend cuda --shape qwen3-next --state "$state" --n 1,16,64,1024 --reps 20 --csv \
        --paged | tail -n +2 | grep -v ",copy," >>"$out/bench.csv" || status=1
done
grep -E ",gdn(-paged)?," "$out/bench.csv" | cut -d, -f1,6,7,8,9,10,11
exit $status
