#!/usr/bin/env bash
# Builds llama.cpp's ggml CPU library from the llama-cpp-python source distribution on PyPI
# (which vendors llama.cpp), and ggml_gdn_bench.c against it, in build/ggml (git-ignored, never
# committed). -O3 -march=native (GGML_NATIVE), as llama.cpp builds itself; no OpenMP (ggml's own
# threads, THREADS of them per call).
#   bench/peers/ggml_bench/build.sh            -> build/ggml/ggml_gdn_bench
set -euo pipefail
cd "$(dirname "$0")/../../.."
version=${LLAMA_CPP_PYTHON:-0.3.36}
out=build/ggml
mkdir -p "$out"
if [ ! -d "$out/src" ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$out/sdist"
    mkdir -p "$out/src"
    tar xzf "$out"/sdist/llama_cpp_python-"$version".tar.gz -C "$out/src" --strip-components=1
fi
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }
ggml=$out/src/vendor/llama.cpp/ggml
# the sdist leaves out ggml's pkg-config template, which its CMakeLists configures unconditionally
[ -f "$ggml/ggml.pc.in" ] || : >"$ggml/ggml.pc.in"
cmake -S "$ggml" -B "$out/cmake" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
    -DGGML_OPENMP=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF >"$out/cmake.log"
cmake --build "$out/cmake" -j"$(nproc)" --target ggml-cpu ggml-base >>"$out/cmake.log"
libs=$(find "$out/cmake" -name 'libggml-cpu.a' -o -name 'libggml-base.a' | sort -r)
cc -O2 -o "$out/ggml_gdn_bench" bench/peers/ggml_bench/ggml_gdn_bench.c -I"$ggml/include" $libs -lm -lpthread -lstdc++
echo "built $out/ggml_gdn_bench (llama-cpp-python $version, $(grep -m1 -o 'LLAMA_BUILD_COMMIT[^)]*' "$out/src/vendor/llama.cpp/CMakeLists.txt" 2>/dev/null || echo 'vendored llama.cpp'))"
