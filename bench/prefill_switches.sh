#!/usr/bin/env bash
# On the GPU machine: the chunked prefill's environment switches tested, then timed against the
# default, interleaved (for a switch that is off by default until it wins, GDN_PREFILL_WY, or
# that turns a default off, GDN_PREFILL_KARY=0). Every step's log goes to OUTDIR as it runs.
#   bench/prefill_switches.sh OUTDIR       (build/test_gdn and build/libgdn.so as built or carried)
# PS_PATHS: the prefill test paths (GDN_TEST_PREFILL_PATHS) of decode/cuda_prefill_chunked, and
# PS_SAN_PATHS those of decode/cuda_sanitize_prefill under memcheck (empty: none);
# PS_SWITCHES: settings to time beside the default ("GDN_PREFILL_WY=1 GDN_PREFILL_KARY=0"; commas
# join several into one setting: "GDN_PREFILL_BULK=1,GDN_PREFILL_LOCAL6=1");
# PS_CASES / PS_SHAPES: prefill_tune.py's cases and shapes; PS_ROUNDS: rounds (2);
# PS_TEST_S: seconds for the chunked tests (300). Give GDN_COMMIT.
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$1
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1
. tests/gpu/steps.sh
step tests-cuda 120 build/test_gdn cuda/ -huge
if [ -n "${PS_PATHS-3,8}" ]; then
    GDN_TEST_PREFILL_PATHS=${PS_PATHS-3,8} step tests-prefill "${PS_TEST_S:-300}" build/test_gdn decode/cuda_prefill_chunked
fi
if [ -n "${PS_SAN_PATHS-8}" ]; then
    GDN_TEST_PREFILL_PATHS=${PS_SAN_PATHS-8} step memcheck 120 "$sanitizer" --tool memcheck --error-exitcode 1 \
        build/test_gdn decode/cuda_sanitize_prefill
fi
read -ra switches <<<"${PS_SWITCHES:-GDN_PREFILL_WY=1 GDN_PREFILL_KARY=0}"
for round in $(seq 1 "${PS_ROUNDS:-2}"); do
    for setting in default "${switches[@]}"; do
        if [ "$setting" = default ]; then
            timeout 120 python3 bench/prefill_tune.py --lib build/libgdn.so --cases "${PS_CASES:-1x4096,4x4096,1x32768,mixed}" \
                --shapes "${PS_SHAPES:-qwen3-next,contest}" --label gdn-default 2>&1
        else
            env ${setting//,/ } timeout 120 python3 bench/prefill_tune.py --lib build/libgdn.so \
                --cases "${PS_CASES:-1x4096,4x4096,1x32768,mixed}" --shapes "${PS_SHAPES:-qwen3-next,contest}" \
                --label "gdn-${setting//,/+}" 2>&1
        fi
    done
done | { echo "$header"; cat; } >"$out/timing.log"
grep -v '^#' "$out/timing.log" | sort
exit $status
