#!/usr/bin/env bash
# Registers per thread of every kernel instantiation of one CUDA file, as ptxas reports them
# (-Xptxas -v, sm_90a), for two sets of defines side by side: what a compile-time variant does
# to register pressure (and so to the blocks a multiprocessor holds), without a GPU.
#   bench/ptxas_registers.sh FILE "DEFINES A" "DEFINES B"
# e.g. bench/ptxas_registers.sh src/cuda/decode_multi_token.cu -DGDN_MT_SWIZZLE=0 -DGDN_MT_SWIZZLE=1
# Prints: registers with A, with B, and the demangled kernel name; pairs are matched by name
# after the regular expression $STRIP (if set) is removed from each, e.g. STRIP=', (true|false)>$'
# for a trailing template flag that A and B set differently.
set -euo pipefail
cd "$(dirname "$0")/.."
file=$1 a=$2 b=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for side in a b; do
    defs=${!side}
    # shellcheck disable=SC2086
    nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude $defs -Xptxas -v -c "$file" \
        -o "$tmp/$side.o" 2>"$tmp/$side.log"
done
echo "# $file; A: $a; B: $b; nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), sm_90a"
python3 - "$tmp/a.log" "$tmp/b.log" <<'PY'
import os, re, subprocess, sys
def parse(path):
    regs, entry = {}, None
    for line in open(path):
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            entry = m.group(1)
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and entry:
            regs[entry] = int(m.group(1))
            entry = None
    names = subprocess.run(["c++filt"], input="\n".join(regs), capture_output=True, text=True).stdout.split("\n")
    strip = os.environ.get("STRIP")
    out = {}
    for k, d in zip(regs, names):
        d = re.sub(r"\([^()]*\)$", "", d)  # the parameter list
        out[re.sub(strip, ">", d) if strip else d] = regs[k]
    return out
a, b = parse(sys.argv[1]), parse(sys.argv[2])
print("regs_a,regs_b,kernel")
for name in sorted(set(a) & set(b)):
    print(f"{a[name]},{b[name]},\"{name}\"")
PY
