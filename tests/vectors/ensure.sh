#!/usr/bin/env bash
# Prints the directory of the reference vectors (SPEC 6) for the tests, making sure it exists:
# $GDN_VECTORS if set, else ../shared/vectors beside the checkout, else the same six files
# regenerated into build/vectors by make_vectors.py (a copy of ../shared/vectors/make_vectors.py,
# deterministic: same seeds, same files), installing NumPy if needed. Fails loudly otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${GDN_VECTORS:-}" ]; then echo "$GDN_VECTORS"; exit 0; fi
if [ -f ../shared/vectors/long_horizon.gdnv ]; then echo "$(cd ../shared/vectors && pwd)"; exit 0; fi
out=build/vectors
if [ ! -f "$out/long_horizon.gdnv" ]; then
    echo "ensure.sh: ../shared/vectors not found; regenerating the reference vectors into $out" >&2
    python3 -c 'import numpy' 2>/dev/null || python3 -m pip install --quiet numpy >&2
    python3 tests/vectors/make_vectors.py "$out" >&2
fi
echo "$PWD/$out"
