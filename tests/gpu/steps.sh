# Sourced by the GPU scripts (tests/gpu/quick.sh, bench/one_token_tune.sh, bench/mtp_*.sh): the
# header every log starts with, $GDN_VECTORS and $sanitizer, and `step NAME SECONDS COMMAND...`,
# which runs COMMAND with a time limit, keeps its output in $out/NAME.log (so a run cut short
# keeps what it finished), prints one line, and sets status=1 when it fails. Needs $out and $commit set.
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
header="# device: ${device:-unknown}; date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $commit"
# the reference vectors (regenerated into build/vectors when ../shared is absent) and the sanitizer
export GDN_VECTORS=${GDN_VECTORS:-$(tests/vectors/ensure.sh 2>/dev/null)}
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
status=0
step() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    { echo "$header"; echo "# command: $*"; } >"$out/$name.log"
    timeout "$limit" "$@" >>"$out/$name.log" 2>&1
    local rc=$?
    echo "# exit status: $rc after $((SECONDS - start)) s" >>"$out/$name.log"
    echo "== $name: exit $rc, $((SECONDS - start)) s: $(grep -v '^#' "$out/$name.log" | tail -1)"
    [ "$rc" -eq 0 ] || status=1
}
