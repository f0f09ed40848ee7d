#!/usr/bin/env bash
# On the GPU machine: installs the peer wheels fetched by fetch_wheels.sh into one folder
# (default /tmp/site) without network. FLA comes from .whl/fla; FlashInfer from the parts in
# .whl/fi-parts, joined here once all of them are present (each call carries one part;
# ignored paths stay in the repository copy between calls while the machine is warm).
# A missing package is reported, not fatal: peer_bench.py then records why that peer is absent.
#
# usage: bash bench/peers/install_peers.sh [SITE]; then export PYTHONPATH=SITE
# peer_bench.py processes the .pth files of PYTHONPATH folders itself (pip --target leaves
# nvidia-cutlass-dsl's .pth unprocessed otherwise, and `import cutlass` would fail).
set -uo pipefail
site=${1:-/tmp/site}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
py=${PYTHON:-python3}
pip_install() { "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$@"; }

shopt -s nullglob
fla=(.whl/fla/*.whl)
if ((${#fla[@]})); then
    pip_install "${fla[@]}" && echo "install_peers: FLA installed into $site (${fla[*]##*/})"
else
    echo "install_peers: no .whl/fla/*.whl here (carry .whl/fla): FLA will be absent"
fi

parts=(.whl/fi-parts/fi-*-of-*.tarpart)
if ((${#parts[@]} == 0)); then
    echo "install_peers: no FlashInfer parts in .whl/fi-parts: FlashInfer will be absent"
    exit 0
fi
want=${parts[0]##*-of-}
want=$((10#${want%.tarpart}))
if ((${#parts[@]} != want)); then
    echo "install_peers: ${#parts[@]} of $want FlashInfer parts here (${parts[*]##*/}): carry the others first"
    exit 0
fi
tmp=$(mktemp -d)
if cat "${parts[@]}" | tar -C "$tmp" -xf - && pip_install "$tmp"/*.whl; then
    echo "install_peers: FlashInfer installed into $site ($(cd "$tmp" && ls *.whl | tr '\n' ' '))"
else
    echo "install_peers: joining or installing the FlashInfer parts failed"
fi
rm -rf "$tmp"
