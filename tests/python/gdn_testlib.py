"""What the Python tests share: importing gdn from this checkout, an independent NumPy float64
implementation of SPEC section 1, model-like random inputs, the reference-vector reader, error
measures and a small test runner so that pytest is optional.

The runner: `run(globals())` runs every test_* function of a module, prints one line per test
and "N passed, N failed, N skipped", and exits non-zero on a failure. Tests skip by raising
unittest.SkipTest, which pytest reports as a skip too.
"""
import math
import os
import sys
import time
import traceback
import unittest
from pathlib import Path

try:
    import numpy as np
except ImportError:  # the message a fresh machine needs, not a bare traceback
    sys.exit("the gdn Python tests need NumPy: python3 -m pip install numpy")

REPO = Path(__file__).resolve().parents[2]


def import_gdn():
    """The gdn package of this checkout (python/), loading the checkout's build/libgdn.so unless
    $GDN_LIBRARY says otherwise. GDN_TEST_INSTALLED=1 tests the installed package instead."""
    if os.environ.get("GDN_TEST_INSTALLED") != "1":
        sys.path.insert(0, str(REPO / "python"))
    import gdn

    return gdn


def skip(reason):
    raise unittest.SkipTest(reason)


def optional_torch():
    """torch, or None when it is not installed (the torch tests then skip)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def require_torch():
    torch = optional_torch()
    if torch is None:
        skip("torch is not installed (pip install torch --index-url https://download.pytorch.org/whl/cpu)")
    return torch


# ----------------------------------------------------------------------------------------------
# SPEC section 1 in NumPy float64, written from the spec (not from the C code)
# ----------------------------------------------------------------------------------------------

def _softplus(x):
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def _is_padding(slot, null_slot_zero):
    return slot < 0 or (null_slot_zero and slot == 0)


def _heads(num_q_heads, num_v_heads, head_map):
    hv = np.arange(num_v_heads)
    return hv % num_q_heads if head_map == "tiled" else hv // (num_v_heads // num_q_heads)


def _scale_of(scale, head_k):
    """The scale as gdn uses it: a float32 (gdn_decode_params.scale), 1/sqrtf(K) by default."""
    return float(np.float32(scale) if scale else np.float32(1) / np.sqrt(np.float32(head_k)))


def spec_token(S, q, k, v, a, b, A_log, dt_bias, h, scale, qk_l2norm):
    """One token of SPEC section 1 for one sequence, every value head at once, in float64.
    S [HV, V, K] (row = value channel), q, k [H, K], v [HV, V], a, b [HV]; h[hv] is the query/key
    head of value head hv. Returns (S after the token, o [HV, V])."""
    qq, kk = q[h], k[h]  # [HV, K]
    if qk_l2norm:
        qq = qq / np.sqrt(np.sum(qq * qq, axis=-1, keepdims=True) + 1e-6)
        kk = kk / np.sqrt(np.sum(kk * kk, axis=-1, keepdims=True) + 1e-6)
    qq = qq * scale
    g = -np.exp(A_log) * _softplus(a + dt_bias)
    beta = 1.0 / (1.0 + np.exp(-b))
    S = S * np.exp(g)[:, None, None]
    u = beta[:, None] * (v - np.einsum("hvk,hk->hv", S, kk))
    S = S + u[:, :, None] * kk[:, None, :]
    return S, np.einsum("hvk,hk->hv", S, qq)


def reference_decode(q, k, v, a, b, A_log, dt_bias, pool, slots, write_slots=None, *, scale=None,
                     qk_l2norm=True, head_map="grouped", layout="vk", null_slot_zero=False):
    """(out [N, HV, V], pool after the step), both float64; the inputs are not modified.

    Every row reads the pool as it was before the call (rows are independent, gdn.h). The
    scale is rounded to float32 as gdn_decode_params.scale is a float (1/sqrtf(K) by default)."""
    return reference_decode_tokens(q, k, v, a, b, A_log, dt_bias, pool, slots, write_slots=write_slots, scale=scale,
                                   qk_l2norm=qk_l2norm, head_map=head_map, layout=layout,
                                   null_slot_zero=null_slot_zero)


def reference_decode_tokens(q, k, v, a, b, A_log, dt_bias, pool, slots=None, *, num_tokens=1, cu_seqlens=None,
                            token_slots=None, num_accepted=None, write_slots=None, scale=None, qk_l2norm=True,
                            head_map="grouped", layout="vk", null_slot_zero=False):
    """SPEC operation 2 (multi-token decode) in NumPy float64, token by token: (out, pool after).

    Activations are token rows: q, k [R, H, K], v [R, HV, V], a, b [R, HV]. Sequence n owns rows
    n*num_tokens .. +num_tokens, or cu_seqlens[n] .. cu_seqlens[n+1] with cu_seqlens. It starts
    from slot slots[n], or token_slots[n][num_accepted[n] - 1] with num_accepted (a null slot:
    padding, zero outputs, no state touched); the state after token t goes to token_slots[n][t]
    when token_slots is given (a null slot: not saved), else the state after the last token to
    write_slots[n] (default slots[n]). Rows of no sequence are returned as NaN. Every sequence
    reads the pool as it was before the call."""
    q, k, v, a, b = (np.asarray(x, dtype=np.float64) for x in (q, k, v, a, b))
    A_log, dt_bias = np.asarray(A_log, np.float64), np.asarray(dt_bias, np.float64)
    before = np.asarray(pool, dtype=np.float64)
    after = before.copy()
    num_rows, num_q_heads, head_k = q.shape
    num_v_heads, head_v = v.shape[1:]
    h = _heads(num_q_heads, num_v_heads, head_map)
    scale = _scale_of(scale, head_k)
    if cu_seqlens is not None:
        bounds = [(int(cu_seqlens[n]), int(cu_seqlens[n + 1])) for n in range(len(cu_seqlens) - 1)]
    else:
        bounds = [(n * num_tokens, (n + 1) * num_tokens) for n in range(num_rows // num_tokens)]
    out = np.full((num_rows, num_v_heads, head_v), np.nan)

    def null(slot):
        return _is_padding(int(slot), null_slot_zero)

    for n, (first, end) in enumerate(bounds):
        if end == first:
            continue  # a sequence without tokens: nothing written
        read = int(token_slots[n][int(num_accepted[n]) - 1]) if num_accepted is not None else int(slots[n])
        if null(read):
            out[first:end] = 0.0
            continue
        S = before[read] if layout == "vk" else before[read].swapaxes(-1, -2)  # [HV, V, K]
        for t, row in enumerate(range(first, end)):
            S, out[row] = spec_token(S, q[row], k[row], v[row], a[row], b[row], A_log, dt_bias, h, scale,
                                     qk_l2norm)
            if token_slots is not None and not null(token_slots[n][t]):
                after[int(token_slots[n][t])] = S if layout == "vk" else S.swapaxes(-1, -2)
        if token_slots is None:
            write = read if write_slots is None else int(write_slots[n])
            if not null(write):
                after[write] = S if layout == "vk" else S.swapaxes(-1, -2)
    return out, after


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

class Problem:
    """Random float32 inputs with trained-model statistics (as ../shared/vectors/README.md):
    A = exp(A_log) in [1, 16], softplus(dt_bias) in [1e-3, 1e-1], q, k, v, a, b standard normal,
    states N(0, 0.05^2). Fresh each run unless a seed is given; never zeros."""

    def __init__(self, rng, num_seqs, num_q_heads, num_v_heads, head_k, head_v, num_slots, layout="vk"):
        f32 = np.float32
        self.q = rng.standard_normal((num_seqs, num_q_heads, head_k)).astype(f32)
        self.k = rng.standard_normal((num_seqs, num_q_heads, head_k)).astype(f32)
        self.v = rng.standard_normal((num_seqs, num_v_heads, head_v)).astype(f32)
        self.a = rng.standard_normal((num_seqs, num_v_heads)).astype(f32)
        self.b = rng.standard_normal((num_seqs, num_v_heads)).astype(f32)
        self.A_log = np.log(rng.uniform(1, 16, num_v_heads)).astype(f32)
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), num_v_heads))
        self.dt_bias = (dt + np.log(-np.expm1(-dt))).astype(f32)  # inverse softplus
        row = (head_v, head_k) if layout == "vk" else (head_k, head_v)
        self.pool = (rng.standard_normal((num_slots, num_v_heads) + row) * 0.05).astype(f32)
        self.layout = layout

    def args(self):
        """The positional arguments of gdn.decode before the slot indices (pool included)."""
        return [self.q, self.k, self.v, self.a, self.b, self.A_log, self.dt_bias, self.pool]


def new_rng(seed=None):
    """A generator seeded from the OS (fresh inputs each run) unless `seed` is given; the seed
    used is printed so that a failure can be replayed with GDN_TEST_SEED."""
    if seed is None:
        seed = int(os.environ.get("GDN_TEST_SEED", "0")) or int.from_bytes(os.urandom(4), "little")
    print(f"    (rng seed {seed}; GDN_TEST_SEED={seed} replays it)")
    return np.random.default_rng(seed)


def rel_err(x, ref):
    """||x - ref|| / ||ref|| in float64 (SPEC 6)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    denominator = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / (denominator if denominator > 0 else 1.0))


def bf16_round(x):
    """x (float32/float64) rounded to the nearest bfloat16 (ties to even), as float64."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Reference vectors (../shared/vectors/README.md)
# ----------------------------------------------------------------------------------------------

_GDNV_DTYPES = {0: np.float32, 1: np.float64, 2: np.int64}


def read_gdnv(path):
    """The arrays of a .gdnv file, by name."""
    data = Path(path).read_bytes()
    if data[:8] != b"GDNVEC01":
        raise ValueError(f"{path}: not a GDNVEC01 file")
    count, at = int(np.frombuffer(data, "<u4", 1, 8)[0]), 12
    arrays = {}
    for _ in range(count):
        name = data[at:at + 32].rstrip(b"\0").decode()
        dtype_code, ndim = (int(x) for x in np.frombuffer(data, "<u4", 2, at + 32))
        shape = tuple(int(x) for x in np.frombuffer(data, "<i8", ndim, at + 40))
        at += 40 + 8 * ndim
        dtype = np.dtype(_GDNV_DTYPES[dtype_code]).newbyteorder("<")
        size = math.prod(shape)
        arrays[name] = np.frombuffer(data, dtype, size, at).reshape(shape).astype(dtype.newbyteorder("="))
        at += size * dtype.itemsize
    return arrays


def vectors_dir():
    """$GDN_VECTORS, else ../shared/vectors beside the checkout, else build/vectors (what
    tests/vectors/ensure.sh regenerates); None if none holds the files."""
    candidates = [os.environ.get("GDN_VECTORS"), REPO.parent / "shared" / "vectors", REPO / "build" / "vectors"]
    for candidate in candidates:
        if candidate and Path(candidate, "long_horizon.gdnv").is_file():
            return Path(candidate)
    return None


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------

def run(namespace):
    """Runs the test_* functions of `namespace` in order; exit status 1 if any failed.
    GDN_TESTS=a,b runs only the tests whose names contain a or b (a GPU call short of time)."""
    tests = [(name, f) for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    only = [part for part in os.environ.get("GDN_TESTS", "").split(",") if part]
    if only:
        tests = [(name, f) for name, f in tests if any(part in name for part in only)]
    passed = failed = skipped = 0
    for name, test in tests:
        start = time.perf_counter()
        print(f"{name} ...", flush=True)
        try:
            test()
        except unittest.SkipTest as reason:
            skipped += 1
            print(f"SKIP {name}: {reason}", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        else:
            passed += 1
            print(f"PASS {name} ({time.perf_counter() - start:.2f}s)", flush=True)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)
