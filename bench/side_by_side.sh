#!/usr/bin/env bash
# On the GPU machine: the side by side of issues 9, 10 and 13 (gdn beside FLA and FlashInfer),
# in the calls the 64 MiB carry limit allows. FlashInfer's wheel comes in two parts of 56 MiB
# (bench/peers/fetch_wheels.sh), one a call; each call's carried paths replace the last
# call's, so `part` copies the part it finds into /tmp/fi-parts, which lasts while the machine
# stays warm (30 s after a call). Every later stage puts them back where install_peers.sh looks.
#
#   bench/side_by_side.sh part                  carry .whl/fi0 (then .whl/fi1): keep the part
#   bench/side_by_side.sh mtp-prefill OUTDIR    carry .whl/fla and .carry/bin: install the
#        peers, the cuda tests, mtp_bench.py (mtp-DEV) and prefill_bench.py (prefill-DEV)
#   bench/side_by_side.sh decode OUTDIR         the same carry: peer_bench.py (decode-DEV)
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
final=$2
out=/tmp/side_by_side/$stage
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
mkdir -p .whl/fi-parts
cp "$parts"/fi-*-of-*.tarpart .whl/fi-parts/ 2>/dev/null
bash bench/peers/install_peers.sh /tmp/site >"$out/install.log" 2>&1
cat "$out/install.log"
export PYTHONPATH=/tmp/site
. tests/gpu/steps.sh
case "$stage" in
mtp-prefill)
    step info 20 build/gdn info
    step tests 200 build/test_gdn decode/cuda_multi_token_configs decode/cuda_all vectors/cuda cuda/ -huge
    step mtp 300 python3 bench/peers/mtp_bench.py --lib build/libgdn.so --out "$out" --stem "mtp-$dev" \
        --budget-s 240
    step prefill 300 python3 bench/peers/prefill_bench.py --lib build/libgdn.so --out "$out" \
        --stem "prefill-$dev" --commit "$commit" --budget-s 240
    ;;
decode)
    step decode 560 python3 bench/peers/peer_bench.py --lib build/libgdn.so --out "$out" \
        --stem "decode-$dev" --budget-s 500
    ;;
*)
    echo "side_by_side: unknown stage $stage" >&2
    exit 2
    ;;
esac
tar -C "$(dirname "$out")" -cJf "$final/$stage.tar.xz" "$stage"
exit $status
