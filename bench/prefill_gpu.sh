#!/usr/bin/env bash
# On the GPU machine: the chunked prefill's checks and gdn's own timings (issue 13), one call.
#   bash bench/prefill_gpu.sh OUT [BUILD_DIR...]
# For each build folder (default build): the wgmma helpers' check (first build, where built),
# decode/cuda_prefill_chunked (the seven product paths, GDN_TEST_PREFILL_PATHS=4,5,6: some of them;
# errors printed; PREFILL_TEST_ALL=0: the first build only) and the refused workspaces, then gdn alone on the issue's cases (bench/prefill_tune.py) with the default
# products (split: gdn.forward passes a workspace), its walk on mma.sync (GDN_PREFILL_WGMMA=0) and on
# wgmma with 1, 2 and 4 slices a block (PREFILL_WGMMA=0: not), without the split (PREFILL_FUSED=0: not) (GDN_PREFILL_SPLIT=0: the
# pipelined single kernel), phase by phase (GDN_PREFILL_PIPELINE=0; PREFILL_PHASED=0: not) and
# with GDN_PREFILL_PRECISE=1 (PREFILL_PRECISE=0: not). The first build also runs the rest of the cuda tests
# it touches (cuda_all, the gates test) and compute-sanitizer memcheck and racecheck of the
# small prefill test (decode/cuda_sanitize_prefill) (PREFILL_SANITIZE=0: none of these;
# PREFILL_OTHERS=0: the sanitizers only), PREFILL_PYTHON=1 the Python GPU tests of gdn.forward and
# the multi-token calls, and with
# PREFILL_NCU=1 an Nsight Compute report of one call's kernels (1x4096 qwen3-next) for each build
# (PREFILL_NCU_ALL=0: the first only; PREFILL_NCU_SOURCE=1: also their per-instruction pages).
# Logs and prefill-tune.csv go to OUT.
set -uo pipefail
out=$1
shift
builds=("${@:-build}")
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$out"
. "$(dirname "$0")/../tests/gpu/steps.sh"
first=1
for b in "${builds[@]}"; do
    tag=$(basename "$b")
    [ "$first" = 1 ] && [ -x "$b/wgmma_check" ] && step "wgmma-check-$tag" 60 "$b/wgmma_check"
    [ "$first" = 1 ] || [ "${PREFILL_TEST_ALL:-1}" = 1 ] &&
        step "prefill-test-$tag" 300 "$b/test_gdn" decode/cuda_prefill_chunked decode/cuda_prefill_workspace_refused
    step "tune-$tag" 200 env GDN_PREFILL_LABEL="gdn-$tag" python3 bench/prefill_tune.py --lib "$b/libgdn.so" \
        --reps 15 --csv "$out/prefill-tune.csv"
    if [ "${PREFILL_WGMMA:-1}" = 1 ]; then
        for w in 0 1 2 4; do
            step "tune-wgmma$w-$tag" 200 env GDN_PREFILL_WGMMA=$w GDN_PREFILL_LABEL="gdn-wgmma$w-$tag" \
                python3 bench/prefill_tune.py --lib "$b/libgdn.so" --reps 15 --csv "$out/prefill-tune.csv"
        done
    fi
    [ "${PREFILL_FUSED:-1}" = 1 ] && step "tune-fused-$tag" 200 env GDN_PREFILL_SPLIT=0 GDN_PREFILL_LABEL="gdn-fused-$tag" \
        python3 bench/prefill_tune.py --lib "$b/libgdn.so" --reps 15 --csv "$out/prefill-tune.csv"
    [ "${PREFILL_PHASED:-1}" = 1 ] && step "tune-phased-$tag" 200 env GDN_PREFILL_SPLIT=0 GDN_PREFILL_PIPELINE=0 \
        GDN_PREFILL_LABEL="gdn-phased-$tag" python3 bench/prefill_tune.py --lib "$b/libgdn.so" --reps 15 \
        --csv "$out/prefill-tune.csv"
    [ "${PREFILL_PRECISE:-1}" = 1 ] && step "tune-precise-$tag" 120 env GDN_PREFILL_PRECISE=1 \
        GDN_PREFILL_LABEL="gdn-precise-$tag" python3 bench/prefill_tune.py --lib "$b/libgdn.so" --reps 10 \
        --shapes qwen3-next --csv "$out/prefill-tune.csv"
    if [ "$first" = 1 ] && [ "${PREFILL_SANITIZE:-1}" = 1 ]; then
        [ "${PREFILL_OTHERS:-1}" = 1 ] && step "cuda-others-$tag" 240 "$b/test_gdn" decode/cuda_all decode/cuda_gates
        step "memcheck-$tag" 150 "$sanitizer" --tool memcheck --error-exitcode 1 "$b/test_gdn" decode/cuda_sanitize_prefill
        step "racecheck-$tag" 150 "$sanitizer" --tool racecheck --error-exitcode 1 "$b/test_gdn" decode/cuda_sanitize_prefill
    fi
    if [ "$first" = 1 ] && [ "${PREFILL_PYTHON:-0}" = 1 ]; then
        step "python-prefill-$tag" 240 env GDN_LIBRARY="$b/libgdn.so" GDN_TESTS=forward,decode_tokens \
            python3 tests/python/test_gpu.py
    fi
    if [ "${PREFILL_NCU:-0}" = 1 ] && { [ "$first" = 1 ] || [ "${PREFILL_NCU_ALL:-1}" = 1 ]; }; then
        ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
        step "ncu-$tag" 180 "$ncu" --set full --kernel-name regex:prefill_ --launch-count 2 \
            --print-details all python3 bench/prefill_tune.py --lib "$b/libgdn.so" --reps 1 --cases 1x4096 \
            --shapes qwen3-next
        # per-instruction counts and stall samples (SASS; source lines where built with -lineinfo)
        [ "${PREFILL_NCU_SOURCE:-0}" = 1 ] && step "ncu-source-$tag" 180 "$ncu" --set full \
            --kernel-name regex:prefill_ --launch-count 2 --page source --print-source sass --csv \
            python3 bench/prefill_tune.py --lib "$b/libgdn.so" --reps 1 --cases 1x4096 --shapes qwen3-next
    fi
    first=0
done
exit $status
