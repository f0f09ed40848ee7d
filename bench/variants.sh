#!/usr/bin/env bash
# Builds the library several times with different compile-time kernel settings, runs each one's
# cuda tests and benches those that pass, for tuning on the GPU machine in one call:
#   bench/variants.sh OUTDIR "name:NVCC defines" ... -- gdn bench arguments
# e.g. bench/variants.sh /tmp/v "rows4:" "rows1:-DGDN_FAST_MAX_ROWS=1" -- --shape contest
set -u -o pipefail
cd "$(dirname "$0")/.."
out=$1; shift
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do variants+=("$1"); shift; done
[ $# -gt 0 ] && shift
mkdir -p "$out"
for v in "${variants[@]}"; do
    name=${v%%:*} defines=${v#*:}
    make -j"$(nproc)" BUILD="build/variant-$name" NVCC_EXTRA="$defines" "build/variant-$name/gdn" \
        "build/variant-$name/test_gdn" >"$out/build-$name.log" 2>&1 ||
        { echo "variant $name failed to build"; tail "$out/build-$name.log"; continue; }
    # a variant's speed counts only if it is also right: the cuda tests of the C suite first
    if ! "build/variant-$name/test_gdn" cuda -huge >"$out/tests-$name.log" 2>&1; then
        echo "variant $name FAILED its cuda tests: $(tail -1 "$out/tests-$name.log")"
        continue
    fi
    for state in f32 bf16; do
        "build/variant-$name/gdn" bench --backend cuda --state "$state" --csv "$@" | tail -n +2 |
            sed "s/,gdn,/,gdn-$name,/" >>"$out/variants.csv"
    done
done
grep -v ",copy," "$out/variants.csv" | sort -t, -k1,1 -k6,6 -k7,7n -k8,8
