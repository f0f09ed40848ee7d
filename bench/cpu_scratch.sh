# Sourced by the cpu A/B scripts (cpu_ab.sh, cpu_bf16_ratio.sh, cpu_rows_l2.sh, cpu_isa_ab.sh):
# a scratch folder with a detached worktree at $1 (default HEAD), removed on exit; build_at COMMIT
# TARGET builds TARGET (gdn or libgdn.a) of COMMIT without CUDA into $scratch/build-COMMIT; and
# cpu_header, the start of the "# device:" line every result file opens with.
scratch=$(mktemp -d)
trap 'git worktree remove --force "$scratch/wt" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git worktree add -q --detach "$scratch/wt" "${1:-HEAD}"
build_at() {
    git -C "$scratch/wt" checkout -q "$1"
    make -C "$scratch/wt" -s GDN_CUDA=0 BUILD="$scratch/build-$1" "$scratch/build-$1/$2" >/dev/null
}
cpu_header() {
    echo "# device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
}
