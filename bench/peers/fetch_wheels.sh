#!/usr/bin/env bash
# Downloads the peer packages of bench/peers/peer_bench.py as wheels for the GPU machine
# (Python 3.12, x86_64 Linux, torch 2.11+cu130 and triton 3.6 already there, no network).
#
# Only what the peers need to import and run their GDN decode and the GPU machine lacks:
#   .whl/fla/         fla-core                                   ~1 MiB   (FLA Triton kernels)
#   .whl/flashinfer/  flashinfer-python, nvidia-cutlass-dsl (+ libs-base, libs-core,
#                     libs-cu13) and apache-tvm-ffi               ~155 MiB (FlashInfer CuTe DSL)
#   .whl/fi-parts/    the FlashInfer wheels as one tar cut into parts that each fit the
#                     64 MiB a device call may carry; carry one part per call, then
#                     bench/peers/install_peers.sh joins and installs them there.
# .whl/ is git-ignored, so none of it travels unless a call names it in carry.
#
# FlashInfer's other declared requirements (cuda-python, cuda-tile, nccl4py,
# nccl-extensions, nvidia-cudnn-frontend) are not imported by flashinfer.gdn_decode and are
# left out; the rest (torch, numpy, einops, click, ninja, requests, tqdm, tabulate, packaging,
# nvidia-ml-py, cuda-bindings, protobuf, typing-extensions) is already on the GPU machine.
#
# usage: bash bench/peers/fetch_wheels.sh [fla|flashinfer|all]     (default all)
#   env: PART_MIB (default 54) size of one FlashInfer part; versions below can be overridden.
set -euo pipefail

FLA_CORE=${FLA_CORE:-0.6.0}
FLASHINFER=${FLASHINFER:-0.7.2.post1}
CUTLASS_DSL=${CUTLASS_DSL:-4.8.1}
TVM_FFI=${TVM_FFI:-0.1.15.post2}
PART_MIB=${PART_MIB:-54}
what=${1:-all}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

# Wheels for the GPU machine's interpreter, whatever python runs pip here.
download() { # dest package...
    local dest=$1
    shift
    mkdir -p "$dest"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any \
        --dest "$dest" "$@"
}

if [[ $what == fla || $what == all ]]; then
    rm -rf .whl/fla
    download .whl/fla "fla-core==$FLA_CORE"
fi

if [[ $what == flashinfer || $what == all ]]; then
    rm -rf .whl/flashinfer .whl/fi-parts
    # libs-cu13 only: the DSL picks the newest toolkit flavour the driver supports, and the
    # GPU machine's driver (580) and torch (cu130) are CUDA 13; libs-cu12 would add 92 MiB.
    download .whl/flashinfer "flashinfer-python==$FLASHINFER" \
        "nvidia-cutlass-dsl==$CUTLASS_DSL" "nvidia-cutlass-dsl-libs-base==$CUTLASS_DSL" \
        "nvidia-cutlass-dsl-libs-core==$CUTLASS_DSL" "nvidia-cutlass-dsl-libs-cu13==$CUTLASS_DSL" \
        "apache-tvm-ffi==$TVM_FFI"
    mkdir -p .whl/fi-parts
    # A plain tar (wheels are already compressed), cut into PART_MIB pieces named
    # fi-NN-of-MM.tarpart so that the installer knows when it has them all.
    tar -C .whl/flashinfer -cf .whl/fi-parts/all.tar .
    split -b "${PART_MIB}M" -d -a 2 .whl/fi-parts/all.tar .whl/fi-parts/piece-
    rm .whl/fi-parts/all.tar
    total=$(ls .whl/fi-parts/piece-* | wc -l)
    for p in .whl/fi-parts/piece-*; do
        n=${p##*piece-}
        mv "$p" ".whl/fi-parts/fi-$n-of-$(printf %02d "$total").tarpart"
    done
fi

echo "wheels:"
for d in .whl/fla .whl/flashinfer .whl/fi-parts; do
    [[ -d $d ]] || continue
    ls -l "$d" | awk 'NR > 1 { printf "  %8.2f MiB  %s\n", $5 / 1048576, $9 }'
    du -sh --apparent-size "$d" | awk '{ print "  total " $1 " in " $2 }'
done
