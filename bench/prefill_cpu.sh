#!/usr/bin/env bash
# Varlen prefill on the cpu backend (issue 12): `gdn prefill` in interleaved rounds, written to
# bench/results/prefill-cpu.csv with the machine, date and commit in a header line.
#   bench/prefill_cpu.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build/gdn
cpu=$(grep -m1 "model name" /proc/cpuinfo | sed 's/.*: //')
commit=$(git rev-parse --short HEAD)
{
    echo "# cpu: $cpu, $(nproc) cores; date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $commit; isa: $(build/gdn prefill --cases 1x1 --shapes contest --rounds 1 | sed -n 's/.*isa \([a-z0-9]*\).*/\1/p')"
    build/gdn prefill --cases 1x4096,4x4096 --shapes qwen3-next,contest --rounds "${1:-3}" --csv
} >bench/results/prefill-cpu.csv
cat bench/results/prefill-cpu.csv
