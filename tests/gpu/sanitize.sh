#!/usr/bin/env bash
# compute-sanitizer over the cuda tests that fit a short call, with the library's defaults (the
# mixed-call overlap on, on sm_90+): memcheck over tests/test_cuda.c and the small chunked
# prefill calls, racecheck over the bad-index, checked-mode and mixed-call tests and the small
# chunked calls, initcheck over tests/test_cuda.c. The chunked calls take the split paths the
# default takes (GDN_TEST_PREFILL_PATHS 7: mma.sync walk, 5: wgmma walk of two slices). Each
# step's log goes to OUTDIR as it runs.
#   tests/gpu/sanitize.sh OUTDIR        (build/test_gdn as built or carried; give GDN_COMMIT)
# SAN_TESTS: the memcheck and initcheck tests instead of "cuda/ -huge" (e.g. cuda/mixed for a
# call of a few minutes); SAN_S: seconds a step (150).
set -u -o pipefail
cd "$(dirname "$0")/../.."
out=$1
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
. tests/gpu/steps.sh
tests=${SAN_TESTS:-cuda/ -huge} limit=${SAN_S:-150}
export GDN_TEST_PREFILL_PATHS=${GDN_TEST_PREFILL_PATHS:-7,5}
step memcheck "$limit" "$sanitizer" --tool memcheck --error-exitcode 1 build/test_gdn $tests decode/cuda_sanitize_prefill
step racecheck "$limit" "$sanitizer" --tool racecheck --error-exitcode 1 \
    build/test_gdn cuda/bad cuda/checked cuda/mixed decode/cuda_sanitize_prefill
step initcheck "$limit" "$sanitizer" --tool initcheck --error-exitcode 1 build/test_gdn $tests
exit $status
