#!/usr/bin/env bash
# compute-sanitizer over the cuda tests that fit a short call, with the library's defaults (the
# mixed-call overlap on, on sm_90+): memcheck over tests/test_cuda.c and the small chunked
# prefill calls, racecheck over the bad-index, checked-mode and mixed-call tests and the small
# chunked calls on the split paths the default takes (3: mma.sync walk, 5: wgmma walk of two
# slices), initcheck over tests/test_cuda.c. Each step's log goes to OUTDIR as it runs.
#   tests/gpu/sanitize.sh OUTDIR        (build/test_gdn as built or carried; give GDN_COMMIT)
set -u -o pipefail
cd "$(dirname "$0")/../.."
out=$1
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh
step memcheck 150 "$sanitizer" --tool memcheck --error-exitcode 1 build/test_gdn cuda/ -huge decode/cuda_sanitize_prefill
step racecheck 150 env GDN_TEST_PREFILL_PATHS=3,5 "$sanitizer" --tool racecheck --error-exitcode 1 \
    build/test_gdn cuda/bad cuda/checked cuda/mixed decode/cuda_sanitize_prefill
step initcheck 100 "$sanitizer" --tool initcheck --error-exitcode 1 build/test_gdn cuda/ -huge
exit $status
