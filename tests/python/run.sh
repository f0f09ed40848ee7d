#!/usr/bin/env bash
# The CPU tests of the Python binding, as `make test` runs them (after `make all`), then the peer
# harness's CPU self-test: installs NumPy if it is missing (pip; --user --break-system-packages
# where the system Python is externally managed), finds or regenerates the reference vectors, then
# runs the tests without pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet numpy 2>/dev/null ||
        python3 -m pip install --quiet --user --break-system-packages numpy
fi
vectors=$(tests/vectors/ensure.sh)
GDN_VECTORS=$vectors python3 tests/python/test_decode_cpu.py
# gdn.forward (varlen sequences of any length), precomputed g/beta, compat.chunk_gated_delta_rule.
python3 tests/python/test_forward_cpu.py
# The example runs as a serving loop would, and checks itself against the reference backend.
python3 examples/decode_loop.py >/dev/null
# pip install ./python works and bundles this build's library under the header's version.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
python3 -m pip install --quiet --no-deps --no-build-isolation --target "$site" ./python 2>/dev/null ||
    python3 -m pip install --quiet --no-deps --target "$site" ./python
(cd "$site" && GDN_LIBRARY= python3 -c 'import gdn, sys; print("pip-installed gdn", gdn.__version__, "from", gdn.library_path())
sys.exit(0 if gdn.library_path().startswith(sys.argv[1]) else "the installed package did not load its own libgdn.so")' "$site")
# The GPU peer harness drives libgdn through the same package: its CPU self-test keeps it in step
# with the header (it needs torch, as the harness does).
if python3 -c 'import torch' 2>/dev/null; then
    python3 bench/peers/peer_bench.py --cpu-selftest
    python3 bench/peers/mtp_bench.py --cpu-selftest
else
    echo "bench/peers/peer_bench.py --cpu-selftest not run: torch is not installed"
fi
