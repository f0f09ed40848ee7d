#!/usr/bin/env bash
# The CPU tests of the Python binding, as `make test` runs them (after `make all`): installs NumPy
# if it is missing (pip; --user --break-system-packages where the system Python is externally
# managed), finds or regenerates the reference vectors, then runs the tests without pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet numpy 2>/dev/null ||
        python3 -m pip install --quiet --user --break-system-packages numpy
fi
vectors=$(tests/vectors/ensure.sh)
GDN_VECTORS=$vectors exec python3 tests/python/test_decode_cpu.py
