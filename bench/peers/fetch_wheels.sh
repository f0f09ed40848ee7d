#!/usr/bin/env bash
# Downloads the peer packages of bench/peers/peer_bench.py as wheels for the GPU machine
# (Python 3.12, x86_64 Linux, torch 2.11+cu130 and triton 3.6 already there, no network).
#
# Only what the peers need to import and run their GDN decode and the GPU machine lacks:
#   .whl/fla/         fla-core                                   ~1 MiB   (FLA Triton kernels)
#   .whl/flashinfer/  flashinfer-python, nvidia-cutlass-dsl (+ libs-base, libs-core,
#                     libs-cu13) and apache-tvm-ffi               ~114 MiB (FlashInfer CuTe DSL)
#   .whl/fi-parts/    the FlashInfer wheels as one tar cut into as few parts as fit the
#                     64 MiB a device call may carry (two); carry one part per call, then
#                     bench/peers/install_peers.sh joins and installs them there.
# .whl/ is git-ignored, so none of it travels unless a call names it in carry.
#
# FI_SLIM=1 (default) repacks the flashinfer-python wheel without flashinfer/data/ (C++
# sources and headers, 41 MiB of the 59 MiB wheel, read only when FlashInfer JIT-compiles its
# CUDA C++ kernels with nvcc; the GDN decode kernels are CuTe DSL, written in Python). That
# makes two parts instead of three. The repacked wheel keeps its name and says so in
# flashinfer_python-*.dist-info/GDN_BENCH_SLIM, which peer_bench.py reports. FI_SLIM=0 keeps
# the wheel as published.
#
# FlashInfer's other declared requirements (cuda-python, cuda-tile, nccl4py,
# nccl-extensions, nvidia-cudnn-frontend) are not imported by flashinfer.gdn_decode and are
# left out; the rest (torch, numpy, einops, click, ninja, requests, tqdm, tabulate, packaging,
# nvidia-ml-py, cuda-bindings, protobuf, typing-extensions) is already on the GPU machine.
#
# usage: bash bench/peers/fetch_wheels.sh [fla|flashinfer|all]     (default all)
#   env: PART_MAX_MIB (default 58) largest FlashInfer part; FI_SLIM; the versions below.
set -euo pipefail

FLA_CORE=${FLA_CORE:-0.6.0}
FLASHINFER=${FLASHINFER:-0.7.2.post1}
CUTLASS_DSL=${CUTLASS_DSL:-4.8.1}
TVM_FFI=${TVM_FFI:-0.1.15.post2}
PART_MAX_MIB=${PART_MAX_MIB:-58}
FI_SLIM=${FI_SLIM:-1}
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
    if [[ $FI_SLIM == 1 ]]; then
        python3 - .whl/flashinfer/flashinfer_python-*.whl <<'PY'
import os, sys, zipfile
src = sys.argv[1]
tmp = src + ".slim"
drop = "flashinfer/data/"
keep_py = ("flashinfer/data/build_backend.py", "flashinfer/data/build_utils.py")
removed = 0
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        name = info.filename
        if name.startswith(drop) and name not in keep_py:
            removed += 1
            continue
        data = zin.read(name)
        if name.endswith(".dist-info/RECORD"):  # list only what the wheel still holds
            lines = data.decode().splitlines()
            data = ("\n".join(l for l in lines if not (l.startswith(drop) and l.split(",")[0] not in keep_py)) + "\n").encode()
            marker = name.rsplit("/", 1)[0] + "/GDN_BENCH_SLIM"
            zout.writestr(marker, f"repacked by gdn bench/peers/fetch_wheels.sh: {removed} files under "
                          f"{drop} removed (C++ sources for nvcc JIT; not used by the CuTe DSL GDN decode)\n")
            data += f"{marker},,\n".encode()
        zout.writestr(info, data)
os.replace(tmp, src)
print(f"fetch_wheels: slimmed {os.path.basename(src)}: {removed} files under {drop} removed")
PY
    fi
    mkdir -p .whl/fi-parts
    # A plain tar (wheels are already compressed), cut into as few equal parts of at most
    # PART_MAX_MIB as it takes, named fi-NN-of-MM.tarpart so the installer knows it has all.
    tar -C .whl/flashinfer -cf .whl/fi-parts/all.tar .
    size=$(stat -c %s .whl/fi-parts/all.tar)
    count=$(((size + PART_MAX_MIB * 1048576 - 1) / (PART_MAX_MIB * 1048576)))
    split -n "$count" -d -a 2 .whl/fi-parts/all.tar .whl/fi-parts/piece-
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
