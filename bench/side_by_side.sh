#!/usr/bin/env bash
# On the GPU machine: the side by side of issues 9, 10 and 13 (gdn beside FLA and FlashInfer),
# in the calls the 64 MiB carry limit allows. FlashInfer's wheel comes in two parts of 56 MiB
# (bench/peers/fetch_wheels.sh), one a call; each call's carried paths replace the last
# call's, so `part` copies the part it finds into /tmp/fi-parts, which lasts while the machine
# stays warm (30 s after a call). Every later stage puts them back where install_peers.sh looks.
#
#   bench/side_by_side.sh part                  carry .whl/fi0 (then .whl/fi1): keep the part
#   bench/side_by_side.sh mtp-prefill OUTDIR    carry .whl/fla and .carry: install the
#        peers, the cuda tests, mtp_bench.py (mtp-DEV) and prefill_bench.py (prefill-DEV)
#   bench/side_by_side.sh decode OUTDIR         the same carry: peer_bench.py (decode-DEV)
#   (or, when device time is short, mtp-decode then prefill: the same steps, the peers' first)
#   (SBS_PREFILL_ARGS: more prefill_bench.py arguments, e.g. the cases a cut-short run missed,
#   --cases ... --shapes ...; its --merge joins the runs' json afterwards)
#   bench/side_by_side.sh mixed OUTDIR          .carry: the mixed-call overlap's tests and timing
#   bench/side_by_side.sh walk-ncu OUTDIR       .carry: ncu (stall samples by SASS line) of the
#        prefill split path's kernels
#   bench/side_by_side.sh profile OUTDIR        the same carry: every configuration of both
#        decode kernels timed (configs.csv), then ncu of the chosen kernels at N = 64
#        (AB_TIMEOUT: seconds for the A/B of carried variants, 150; SBS_NCU=0: no ncu)
#
# DEV is h200 or h100, from the device's name. The binaries (libgdn.so, gdn, test_gdn of one
# sm_90a build of the commit GDN_COMMIT) come xz'd in .carry/bin, built on the development
# machine with the same nvcc: `make BUILD=... CUDA_ARCHS=-gencode=arch=compute_90a,code=sm_90a`.
set -u -o pipefail
cd "$(dirname "$0")/.."
stage=$1
parts=/tmp/fi-parts
if [ "$stage" = part ]; then
    mkdir -p "$parts"
    cp -v .whl/fi*/fi-*-of-*.tarpart "$parts"/ 2>&1 | sed 's/^/side_by_side: /'
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    ls -l "$parts"
    exit 0
fi
# more than 8 files do not come back from a call: everything goes into OUTDIR/STAGE.tar.xz
# (SBS_DIRECT=1: straight into OUTDIR/STAGE, for a stage of few files that may be cut short)
final=$2
out=/tmp/side_by_side/$stage
[ "${SBS_DIRECT:-0}" = 1 ] && out=$final/$stage
rm -rf "$out"
mkdir -p "$out" "$final" build
for f in .carry/bin/*.xz; do
    [ -e "$f" ] && xz -dc "$f" >"build/$(basename "$f" .xz)"
done
chmod +x build/gdn build/test_gdn 2>/dev/null
commit=${GDN_COMMIT:-unknown}
export GDN_COMMIT=$commit PYTHONUNBUFFERED=1
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in *H200*) dev=h200 ;; *H100*) dev=h100 ;; *) dev=gpu ;; esac
if [ "$stage" != profile ] && [ "$stage" != mixed ] && [ "$stage" != walk-ncu ] && [ ! -d /tmp/site/flashinfer ]; then # installed once a machine
    mkdir -p .whl/fi-parts
    cp "$parts"/fi-*-of-*.tarpart .whl/fi-parts/ 2>/dev/null
    bash bench/peers/install_peers.sh /tmp/site >"$out/install.log" 2>&1
    cat "$out/install.log"
fi
export PYTHONPATH=/tmp/site
. tests/gpu/steps.sh
run_tests() {
    step info 20 build/gdn info
    step tests 200 build/test_gdn decode/cuda_multi_token_configs decode/cuda_all vectors/cuda cuda/ -huge
}
run_mtp() {
    step mtp 300 python3 bench/peers/mtp_bench.py --lib build/libgdn.so --out "$out" --stem "mtp-$dev" \
        --budget-s 200
}
run_prefill() {
    step prefill 300 python3 bench/peers/prefill_bench.py --lib build/libgdn.so --out "$out" \
        --stem "prefill-$dev" --commit "$commit" --budget-s 180 ${SBS_PREFILL_ARGS:-}
}
run_decode() {
    step decode 420 python3 bench/peers/peer_bench.py --lib build/libgdn.so --out "$out" \
        --stem "decode-$dev" --budget-s 320 --skip-cold
}
case "$stage" in
mtp-prefill)
    [ "${SKIP_TESTS:-0}" = 1 ] || run_tests
    run_mtp
    run_prefill
    ;;
decode) run_decode ;;
mtp-decode) # (the two with FlashInfer first, when device time is short)
    run_mtp
    run_decode
    ;;
prefill)
    run_prefill
    [ "${SKIP_TESTS:-0}" = 1 ] || run_tests
    ;;
mixed)
    # a mixed call's two kernels side by side (decode.cu, mixed_overlap): the tests that cover
    # it, then the mixed case with the overlap off and on (GDN_MIXED_OVERLAP), rounds of both, into
    # one log (the csv lines start "mixed,")
    # (SBS_MIXED_TESTS: other tests; SBS_MIXED_ROUNDS: rounds)
    # (the tests run in the order they are registered, whatever the arguments' order: the short
    # cuda/ ones in a step of their own, so the long chunked suite cannot crowd them out)
    step tests-mixed-cuda 120 build/test_gdn cuda/ -huge
    step tests-mixed 240 build/test_gdn ${SBS_MIXED_TESTS:-decode/cuda_all decode/cuda_prefill_chunked}
    # (SBS_MIXED_SWITCH: another 0/1 environment switch to time off and on, e.g. GDN_PREFILL_KARY)
    switch=${SBS_MIXED_SWITCH:-GDN_MIXED_OVERLAP}
    for round in $(seq 1 "${SBS_MIXED_ROUNDS:-3}"); do
        for on in 0 1; do
            env "$switch=$on" timeout 60 python3 bench/prefill_tune.py --lib build/libgdn.so \
                --cases mixed --label "gdn-$switch=$on" 2>&1
        done
    done | { echo "$header"; cat; } >"$out/overlap.log"
    grep -v '^#' "$out/overlap.log" | sort
    ;;
profile)
    # every configuration of both decode kernels beside the library's choice (to retune
    # choose_config on this device), then ncu of the chosen kernels at N = 64
    # carried variant builds (.carry/bin/NAME.gdn.xz, NAME.test_gdn.xz) tested, then timed
    # against this build, interleaved
    variants=()
    for g in build/*.gdn; do
        [ -e "$g" ] && chmod +x "$g" && variants+=("$(basename "$g" .gdn)=$g")
    done
    for t in build/*.test_gdn; do # a variant's own tests, every configuration of both kernels
        [ -e "$t" ] && chmod +x "$t" && step "tests-$(basename "$t" .test_gdn)" 200 "$t" \
            decode/cuda_multi_token_configs decode/cuda_one_token_configs decode/cuda_all vectors/cuda
    done
    if ((${#variants[@]})); then
        AB_TOKENS=${AB_TOKENS:-2 3 4 8} AB_SLOTS=0 AB_NS=1,16,64,256 step ab "${AB_TIMEOUT:-150}" bench/ab_builds.sh "$out/ab" \
            base=build/gdn "${variants[@]}"
        tail -40 "$out/ab.log"
    fi
    one=-1,$(seq -s, 0 14) multi=-1,$(seq -s, 0 13)
    { echo "$header"; echo "shape,H,HV,K,V,state_dtype,N,T,token_slots,impl,median_us,gbps,pct_of_copy"; } \
        >"$out/configs.csv"
    sweep() { # shape state T configs Ns (T = 1: no T and token_slots columns of its own)
        local add='s/^\([^,]*,[^,]*,[^,]*,[^,]*,[^,]*,[^,]*,[^,]*\),/\1,1,no,/'
        [ "$3" = 1 ] || add=
        timeout 60 build/gdn bench --backend cuda --shape "$1" --state "$2" --tokens "$3" --n "$5" --reps 20 \
            --csv --configs "$4" | tail -n +2 | sed "$add"
    }
    start=$SECONDS
    for shape in qwen3-next contest; do
        for state in f32 bf16; do
            ((SECONDS - start < 70)) && sweep "$shape" "$state" 1 "$one" 1,4,16,64,256,1024 >>"$out/configs.csv"
        done
    done
    for T in 2 3 4 8; do
        for state in f32 bf16; do
            ((SECONDS - start < 200)) && sweep qwen3-next "$state" "$T" "$multi" 1,16,64,256 >>"$out/configs.csv"
        done
    done
    echo "== configs: $(grep -vc '^#' "$out/configs.csv") rows in $((SECONDS - start)) s"
    ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
    ncu_cases=("f32 1" "f32 2" "f32 4" "bf16 1" "bf16 4")
    [ "${SBS_NCU:-1}" = 1 ] || ncu_cases=()
    for case in "${ncu_cases[@]}"; do
        set -- $case
        step "ncu-$1-T$2" 60 "$ncu" --section SpeedOfLight --section Occupancy --section WarpStateStats \
            --section SchedulerStats --section InstructionStats --section LaunchStats \
            --section MemoryWorkloadAnalysis --kernel-name regex:decode_ --launch-count 1 --launch-skip 5 \
            build/gdn bench --backend cuda --shape qwen3-next --state "$1" --tokens "$2" --n 64 --reps 2
    done
    ;;
walk-ncu)
    # where the prefill walk's time goes: ncu of the split path's two kernels (the chunk-local
    # one and the walk) for one call, with the stall samples per SASS instruction (SourceCounters),
    # as a report and as text (SBS_WALK_CASES: "shape case" pairs; SBS_WALK_KERNEL: the walk's
    # name regex, prefill_chunked_vk128 = the mma.sync walk that one sequence takes)
    ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
    walk_cases=${SBS_WALK_CASES:-contest 1x32768;qwen3-next 1x4096}
    IFS=';' read -ra pairs <<<"$walk_cases"
    for pair in "${pairs[@]}"; do
        set -- $pair
        name="ncu-$1-$2"
        step "$name" 150 "$ncu" --clock-control none --section SpeedOfLight --section Occupancy \
            --section WarpStateStats --section SchedulerStats --section InstructionStats \
            --section LaunchStats --section MemoryWorkloadAnalysis --section SourceCounters \
            --kernel-name "regex:${SBS_WALK_KERNEL:-prefill_chunked_vk128|prefill_walk_wgmma|prefill_chunk_local}" \
            --launch-skip 2 --launch-count 2 -o "$out/$name" -f \
            python3 bench/prefill_tune.py --lib build/libgdn.so --cases "$2" --shapes "$1" --reps 2
        if [ -e "$out/$name.ncu-rep" ]; then
            # (the details with every section's body: the stall reasons' table too)
            "$ncu" -i "$out/$name.ncu-rep" --page details --print-details all >"$out/$name-details.txt" 2>&1 ||
                "$ncu" -i "$out/$name.ncu-rep" --page details >"$out/$name-details.txt" 2>&1
            "$ncu" -i "$out/$name.ncu-rep" --page source --csv --print-source sass >"$out/$name-sass.csv" 2>&1 ||
                "$ncu" -i "$out/$name.ncu-rep" --page source --csv >"$out/$name-sass.csv" 2>&1
            # the summary here: the source page is 5-6 MB a case, too much to bring back
            python3 bench/ncu_sass_summary.py "$out/$name-sass.csv" >"$out/$name-sass-summary.txt" 2>&1
            head -n 30 "$out/$name-sass-summary.txt"
        fi
    done
    ;;
*)
    echo "side_by_side: unknown stage $stage" >&2
    exit 2
    ;;
esac
[ "${SBS_DIRECT:-0}" = 1 ] || tar -C "$(dirname "$out")" -cJf "$final/$stage.tar.xz" "$stage"
exit $status
