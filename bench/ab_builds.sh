#!/usr/bin/env bash
# A/B of several builds of gdn on the GPU machine in one call: the same `gdn bench` cases for
# every build, interleaved case by case and repeated AB_ROUNDS times (so drift of the machine
# falls on all builds alike), into OUTDIR/ab.csv with the build's name as impl, then a table
# of each build's median over the rounds against the first build's.
#   bench/ab_builds.sh OUTDIR name=path/to/gdn name=path/to/gdn ...
#   bench/ab_builds.sh --summary AB.CSV     (the table alone, of a run cut short)
# Environment: AB_SHAPES (qwen3-next), AB_STATES (f32 bf16), AB_TOKENS (1 2 3 4 8; 1 = the
# one-token call), AB_SLOTS (1: also --token-slots for T = 2..4), AB_NS (1,16,64,256),
# AB_ROUNDS (2), AB_REPS (20).
set -u -o pipefail
summarize() { # the medians over the rounds, each build against the first
    python3 - "$1" <<'PY'
import csv, sys, statistics, collections
rows = list(csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith('#')))
t, names = collections.defaultdict(lambda: collections.defaultdict(list)), []
for r in rows:
    t[(r['shape'], r['state_dtype'], int(r['T']), r['token_slots'], int(r['N']))][r['impl']].append(float(r['median_us']))
    if r['impl'] not in names:
        names.append(r['impl'])
print('shape state T slots N ' + ' '.join(names) + ' ' + ' '.join(n + '/' + names[0] for n in names[1:]) + ' rounds')
for k in sorted(t):
    med = {n: statistics.median(v) for n, v in t[k].items()}
    base = med.get(names[0])
    print(*k, ' '.join('%.2f' % med.get(n, float('nan')) for n in names),
          ' '.join('%.3f' % (med[n] / base) if base and n in med else 'nan' for n in names[1:]),
          min(len(v) for v in t[k].values()))
PY
}
if [ "$1" = --summary ]; then
    grep '^#' "$2"
    summarize "$2"
    exit
fi
cd "$(dirname "$0")/.."
out=$1
shift
mkdir -p "$out"
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
{
    echo "# device: ${device:-unknown}; date: $(date -u +%Y-%m-%dT%H:%MZ); commit: ${GDN_COMMIT:-unknown}; builds: $*"
    echo "round,shape,state_dtype,N,T,token_slots,impl,median_us"
} >"$out/ab.csv"
status=0
for round in $(seq 1 "${AB_ROUNDS:-2}"); do
    for shape in ${AB_SHAPES:-qwen3-next}; do
        for state in ${AB_STATES:-f32 bf16}; do
            for T in ${AB_TOKENS:-1 2 3 4 8}; do
                for slots in "" --token-slots; do
                    if [ -n "$slots" ] && { [ "${AB_SLOTS:-1}" = 0 ] || [ "$T" -lt 2 ] || [ "$T" -gt 4 ]; }; then
                        continue
                    fi
                    tokens=()
                    [ "$T" -gt 1 ] && tokens=(--tokens "$T" $slots)
                    for build in "$@"; do
                        name=${build%%=*} bin=${build#*=}
                        # gdn bench's csv: shape,H,HV,K,V,state_dtype,N,[T,token_slots,]impl,median_us,...
                        timeout 60 "$bin" bench --backend cuda --shape "$shape" --state "$state" "${tokens[@]}" \
                            --n "${AB_NS:-1,16,64,256}" --reps "${AB_REPS:-20}" --csv | tail -n +2 | grep ",gdn," |
                            awk -F, -v r="$round" -v T="$T" -v s="${slots:+yes}" -v name="$name" \
                                '{ if (T > 1) print r","$1","$6","$7","T","(s ? "yes" : "no")","name","$11;
                                   else print r","$1","$6","$7",1,no,"name","$9 }' >>"$out/ab.csv" || status=1
                    done
                done
            done
        done
    done
done
summarize "$out/ab.csv"
exit $status
