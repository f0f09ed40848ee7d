#!/usr/bin/env bash
# A short GPU run for when device time is scarce: the cuda tests of the C suite, a quick cuda
# check, a few benchmark points, and the Python binding's GPU tests (FLA parity if .whl/fla was
# carried). Everything lands in OUTDIR with device, date and commit.
#   tests/gpu/quick.sh OUTDIR
set -u -o pipefail
cd "$(dirname "$0")/../.."
out=$1
mkdir -p "$out"
commit=${GDN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
header="# device: ${device:-unknown}; date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $commit"
status=0
make -j"$(nproc)" all >"$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
export GDN_VECTORS=${GDN_VECTORS:-$(tests/vectors/ensure.sh 2>/dev/null)}
log() { { echo "$header"; echo "# command: $*"; } >"$out/$1.log"; shift; }
log tests-cuda build/test_gdn cuda
timeout 150 build/test_gdn cuda >>"$out/tests-cuda.log" 2>&1 || status=1
log check-quick build/gdn check --backend cuda --quick
timeout 120 build/gdn check --backend cuda --quick >>"$out/check-quick.log" 2>&1 || status=1
{ echo "$header"; echo "shape,H,HV,K,V,state_dtype,N,impl,median_us,gbps,pct_of_copy"; } >"$out/bench.csv"
for shape in qwen3-next contest; do
    for state in f32 bf16; do
        build/gdn bench --backend cuda --shape "$shape" --state "$state" --n 1,16,64,1024 --reps 20 --csv |
            tail -n +2 >>"$out/bench.csv" || status=1
    done
done
log python-gpu python3 tests/python/test_gpu.py
if [ -d .whl/fla ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-fla \
        .whl/fla/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site-fla${PYTHONPATH:+:$PYTHONPATH}
fi
timeout 150 python3 tests/python/test_gpu.py >>"$out/python-gpu.log" 2>&1 || status=1
for f in tests-cuda check-quick python-gpu; do echo "== $f: $(tail -1 "$out/$f.log")"; done
grep ",gdn," "$out/bench.csv" | cut -d, -f1,6,7,9,10,11
exit $status
