"""CPU tests of gdn.forward (varlen sequences of any length, gdn 0.5), the precomputed gates g and
beta of gdn.decode / gdn.decode_tokens, and gdn.compat.chunk_gated_delta_rule with FLA's
fused_recurrent_gated_delta_rule on precomputed gates. NumPy only; the torch tests skip without
torch.

    python3 tests/python/test_forward_cpu.py          or          python3 -m pytest tests/python

gdn.forward on the cpu backend is compared with the library's float64 reference backend and
with the independent NumPy float64 recurrence of gdn_testlib (token by token, written from the
spec), on fresh random inputs (the seed is printed; GDN_TEST_SEED replays it), into out buffers
full of NaN: mixed lengths in one call (1, 3, 17, 40 and 200 tokens, an empty sequence), zero
and non-zero initial states (has_initial_state, with NaN in the slots that must not be read),
both gate forms, write_slot_indices, padding rows, and bad input raising a clear error with the
pool and out left as they were.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gdn_testlib import Problem, import_gdn, new_rng, reference_decode_tokens, rel_err, require_torch, run  # noqa: E402

import numpy as np  # noqa: E402

gdn = import_gdn()

F32_TOL = 1e-5      # SPEC 6: float32 activations and state against the float64 reference
EXACT_TOL = 1e-12   # the float64 reference backend against the float64 NumPy recurrence
G_F32_TOL = 1e-6    # the reference backend fed g rounded to float32 (g is float32 in gdn_decode_params)
LENGTHS = [1, 3, 17, 40, 0, 200]  # one call: decode, verify, chunked prefills, an empty sequence


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def varlen_problem(rng, lengths=LENGTHS, h=2, hv=4, k=32, v=16, extra_slots=3):
    """A Problem whose rows are the token rows of sequences of `lengths`, its cu_seqlens, and
    distinct read slots in random order (the pool has a few slots more)."""
    rows, num_seqs = sum(lengths), len(lengths)
    problem = Problem(rng, rows, h, hv, k, v, num_seqs + extra_slots)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    slots = rng.permutation(num_seqs + extra_slots)[:num_seqs].astype(np.int64)
    return problem, cu, slots


def gates_of(problem, dtype=np.float32):
    """g = -exp(A_log) * softplus(a + dt_bias) (float32, as gdn takes it) and beta = sigmoid(b),
    computed in float64 from the problem's raw gates."""
    x = problem.a.astype(np.float64) + problem.dt_bias
    softplus = np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))
    g = -np.exp(problem.A_log.astype(np.float64)) * softplus
    beta = 1.0 / (1.0 + np.exp(-problem.b.astype(np.float64)))
    return g.astype(np.float32), beta.astype(dtype)


def poisoned(shape, dtype=np.float32):
    return np.full(shape, np.nan, dtype=dtype)


def run_forward(problem, cu, slots, *, backend="cpu", gates="raw", pool=None, f64=False, **options):
    """gdn.forward into a poisoned out and a copy of the pool: (out, pool after)."""
    dtype = np.float64 if f64 else np.float32
    q, k, v = (x.astype(dtype) for x in (problem.q, problem.k, problem.v))
    pool = (problem.pool if pool is None else pool).astype(dtype)  # a copy
    out = poisoned(v.shape, dtype)
    if gates == "raw":
        a, b = problem.a.astype(dtype), problem.b.astype(dtype)
        form = dict(a=a, b=b, A_log=problem.A_log, dt_bias=problem.dt_bias)
    else:
        g, beta = gates_of(problem, dtype)
        form = dict(a=None, b=None, A_log=None, dt_bias=None, g=g, beta=beta)
    result = gdn.forward(q=q, k=k, v=v, state_pool=pool, cu_seqlens=cu, slot_indices=slots, out=out,
                         backend=backend, **form, **options)
    assert result is out
    return out, pool


def numpy_forward(problem, cu, slots, write_slots=None, pool=None, **options):
    """The NumPy float64 recurrence: (out, pool after); rows of no sequence are NaN."""
    return reference_decode_tokens(problem.q, problem.k, problem.v, problem.a, problem.b, problem.A_log,
                                   problem.dt_bias, problem.pool if pool is None else pool, slots,
                                   num_tokens=max(1, int(np.diff(cu).max())), cu_seqlens=cu, write_slots=write_slots,
                                   layout=problem.layout, **options)


def assert_close(name, x, ref, tol):
    error = rel_err(x, ref)
    assert error <= tol, f"{name}: relative error {error:.3e} > {tol:.1e}"
    return error


def expect_error(kind, call, *fragments):
    """call() must raise `kind` whose message contains every fragment."""
    try:
        call()
    except kind as error:
        for fragment in fragments:
            assert fragment in str(error), f"{fragment!r} not in the message {str(error)!r}"
        return error
    except Exception as error:
        raise AssertionError(f"expected {kind.__name__}, got {type(error).__name__}: {error}") from error
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


# ----------------------------------------------------------------------------------------------
# gdn.forward
# ----------------------------------------------------------------------------------------------

def test_forward_mixed_lengths_against_both_references():
    """Sequences of 1, 3, 17, 40, 0 and 200 tokens in one call, each starting from its (random,
    non-zero) state: cpu against the float64 reference backend and the NumPy recurrence, for both
    state layouts; every output row written, every state saved, the other slots untouched."""
    rng = new_rng()
    for layout in ("vk", "kv"):
        problem, cu, slots = varlen_problem(rng)
        problem.layout = layout
        if layout == "kv":
            problem.pool = np.ascontiguousarray(problem.pool.swapaxes(-1, -2))
        out, pool = run_forward(problem, cu, slots, layout=layout)
        ref_out, ref_pool = run_forward(problem, cu, slots, backend="reference", f64=True, layout=layout)
        np_out, np_pool = numpy_forward(problem, cu, slots)
        assert np.all(np.isfinite(out)), "an output row was not written"
        assert_close(f"{layout}: reference backend out vs NumPy", ref_out, np_out, EXACT_TOL)
        assert_close(f"{layout}: reference backend pool vs NumPy", ref_pool, np_pool, EXACT_TOL)
        errors = [assert_close(f"{layout}: cpu out", out, ref_out, F32_TOL),
                  assert_close(f"{layout}: cpu pool", pool, ref_pool, F32_TOL)]
        for n, (first, end) in enumerate(zip(cu[:-1], cu[1:])):  # each sequence on its own too
            if end > first:
                assert_close(f"{layout}: sequence {n} ({end - first} tokens)", out[first:end], ref_out[first:end],
                             F32_TOL)
        empty = slots[LENGTHS.index(0)]
        unused = np.setdiff1d(np.arange(pool.shape[0]), slots)
        assert np.array_equal(pool[empty], problem.pool[empty]), "a sequence without tokens wrote its slot"
        assert np.array_equal(pool[unused], problem.pool[unused]), "a slot of no sequence changed"
        assert not np.array_equal(pool[slots[-1]], problem.pool[slots[-1]]), "the 200-token state was not saved"
        print(f"    {layout}: cpu out {errors[0]:.2e}, pool {errors[1]:.2e} against float64")


def test_forward_has_initial_state():
    """has_initial_state[n] = 0: sequence n starts from zeros and its read slot is not read (the
    slot holds NaN here), its final state still goes to its write slot; bool and uint8 flags."""
    rng = new_rng()
    problem, cu, slots = varlen_problem(rng)
    flags = np.array([1, 0, 0, 1, 0, 0], dtype=bool)  # the 3- and 17-token ones and the 200-token one start at 0
    poisoned_pool = problem.pool.copy()
    poisoned_pool[slots[~flags]] = np.nan
    zeroed_pool = problem.pool.copy()
    zeroed_pool[slots[~flags]] = 0.0
    np_out, np_pool = numpy_forward(problem, cu, slots, pool=zeroed_pool)
    for flag_array in (flags, flags.astype(np.uint8)):
        for backend in ("cpu", "reference"):
            out, pool = run_forward(problem, cu, slots, backend=backend, f64=backend == "reference",
                                    pool=poisoned_pool, has_initial_state=flag_array)
            assert np.all(np.isfinite(out)), f"{backend}: a zero-state sequence read its NaN slot"
            written = slots[np.array(LENGTHS) > 0]
            assert np.all(np.isfinite(pool[written])), f"{backend}: a final state was not saved"
            tol = F32_TOL if backend == "cpu" else EXACT_TOL
            assert_close(f"{backend} out", out, np_out, tol)
            assert_close(f"{backend} pool", pool[written], np_pool[written], tol)
    # all ones is the same as no flags at all
    ones_out, ones_pool = run_forward(problem, cu, slots, has_initial_state=np.ones(len(LENGTHS), bool))
    plain_out, plain_pool = run_forward(problem, cu, slots)
    assert np.array_equal(ones_out, plain_out) and np.array_equal(ones_pool, plain_pool)


def test_forward_gate_forms_agree():
    """a, b, A_log, dt_bias and g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b) give the
    same result, on the cpu and reference backends; g and beta may be strided views."""
    rng = new_rng()
    problem, cu, slots = varlen_problem(rng)
    raw_out, raw_pool = run_forward(problem, cu, slots)
    pre_out, pre_pool = run_forward(problem, cu, slots, gates="precomputed")
    assert np.all(np.isfinite(pre_out))
    assert_close("cpu: g/beta out vs a/b", pre_out, raw_out, F32_TOL)
    assert_close("cpu: g/beta pool vs a/b", pre_pool, raw_pool, F32_TOL)
    ref_raw, ref_raw_pool = run_forward(problem, cu, slots, backend="reference", f64=True)
    ref_pre, ref_pre_pool = run_forward(problem, cu, slots, backend="reference", f64=True, gates="precomputed")
    assert_close("reference: g/beta out vs a/b", ref_pre, ref_raw, G_F32_TOL)
    assert_close("reference: g/beta pool vs a/b", ref_pre_pool, ref_raw_pool, G_F32_TOL)
    # strided g and beta: columns of wider per-token arrays (g_stride, beta_stride in elements)
    g, beta = gates_of(problem)
    rows, hv = g.shape
    wide_g, wide_beta = np.full((rows, hv + 3), np.nan, np.float32), np.full((rows, 2 * hv), np.nan, np.float32)
    wide_g[:, 3:], wide_beta[:, :hv] = g, beta
    pool = problem.pool.copy()
    out = gdn.forward(problem.q, problem.k, problem.v, None, None, None, None, pool, cu_seqlens=cu,
                      slot_indices=slots, g=wide_g[:, 3:], beta=wide_beta[:, :hv], backend="cpu")
    assert np.array_equal(out, pre_out) and np.array_equal(pool, pre_pool), "strided g/beta differ from packed"


def test_decode_and_decode_tokens_take_g_and_beta():
    """gdn.decode (one token) and gdn.decode_tokens (fixed T = 3, and varlen) with precomputed
    g and beta equal their raw-gate calls."""
    rng = new_rng()
    problem = Problem(rng, 6, 2, 4, 32, 16, 8)
    g, beta = gates_of(problem)
    slots = np.array([4, -1, 0, 7, 2, 5])
    raw_pool, pre_pool = problem.pool.copy(), problem.pool.copy()
    raw = gdn.decode(*problem.args()[:7], raw_pool, slots, backend="cpu")
    pre = gdn.decode(problem.q, problem.k, problem.v, None, None, None, None, pre_pool, slots, g=g, beta=beta,
                     out=poisoned(problem.v.shape), backend="cpu")
    assert np.all(pre[1] == 0), "padding row"
    assert_close("decode: g/beta vs a/b out", pre, raw, F32_TOL)
    assert_close("decode: g/beta vs a/b pool", pre_pool, raw_pool, F32_TOL)
    two = np.array([6, 1])
    shaped = [x.reshape((2, 3) + x.shape[1:]) for x in (problem.q, problem.k, problem.v, problem.a, problem.b)]
    raw_pool, pre_pool = problem.pool.copy(), problem.pool.copy()
    raw = gdn.decode_tokens(*shaped, problem.A_log, problem.dt_bias, raw_pool, slot_indices=two, backend="cpu")
    pre = gdn.decode_tokens(*shaped[:3], None, None, None, None, pre_pool, slot_indices=two, backend="cpu",
                            g=g.reshape(2, 3, -1), beta=beta.reshape(2, 3, -1))
    assert pre.shape == (2, 3, 4, 16)
    assert_close("decode_tokens: g/beta vs a/b out", pre, raw, F32_TOL)
    assert_close("decode_tokens: g/beta vs a/b pool", pre_pool, raw_pool, F32_TOL)
    cu = np.array([0, 2, 2, 6])
    three = np.array([3, 0, 1])
    raw_pool, pre_pool = problem.pool.copy(), problem.pool.copy()
    raw = gdn.decode_tokens(*problem.args()[:7], raw_pool, slot_indices=three, cu_seqlens=cu, num_tokens=4,
                            backend="cpu")
    pre = gdn.decode_tokens(problem.q, problem.k, problem.v, None, None, None, None, pre_pool, slot_indices=three,
                            cu_seqlens=cu, num_tokens=4, g=g, beta=beta, backend="cpu")
    assert_close("decode_tokens varlen: g/beta vs a/b out", pre, raw, F32_TOL)
    assert_close("decode_tokens varlen: g/beta vs a/b pool", pre_pool, raw_pool, F32_TOL)


def test_forward_write_slots_padding_and_forms():
    """write_slot_indices sends final states elsewhere (read slots unchanged; negative: not
    saved); a negative read slot is a padding row (zero outputs, no state touched); [1, R, ...]
    activations (FLA's varlen form) and int32 indices work; null_slot_zero makes slot 0 padding."""
    rng = new_rng()
    lengths = [5, 1, 30, 2, 19]
    problem, cu, _ = varlen_problem(rng, lengths, extra_slots=6)
    slots = np.array([2, -1, 0, 7, 9], dtype=np.int64)
    write = np.array([10, 4, 5, -1, 3], dtype=np.int64)
    out, pool = run_forward(problem, cu, slots, write_slot_indices=write)
    np_out, np_pool = numpy_forward(problem, cu, slots, write_slots=write)
    assert np.all(out[cu[1]:cu[2]] == 0), "padding row"
    assert np.all(np.isfinite(out))
    assert_close("out", out, np_out, F32_TOL)
    assert_close("pool", pool, np_pool, F32_TOL)
    assert np.array_equal(pool[[2, 0, 7, 9, 4]], problem.pool[[2, 0, 7, 9, 4]]), "a read slot or padding write changed"
    assert not np.array_equal(pool[10], problem.pool[10]) and not np.array_equal(pool[5], problem.pool[5])
    # [1, R, ...] forms, int32 indices: the same numbers
    pool32 = problem.pool.copy()
    acts = [x[None] for x in (problem.q, problem.k, problem.v, problem.a, problem.b)]
    out32 = gdn.forward(*acts, problem.A_log, problem.dt_bias, pool32, cu_seqlens=cu.astype(np.int32),
                        slot_indices=slots.astype(np.int32), write_slot_indices=write.astype(np.int32), backend="cpu")
    assert out32.shape == (1,) + problem.v.shape
    assert np.array_equal(out32[0], out) and np.array_equal(pool32, pool)
    # null_slot_zero: the sequence reading slot 0 is a padding row too
    out0, pool0 = run_forward(problem, cu, slots, write_slot_indices=write, null_slot_zero=True)
    assert np.all(out0[cu[2]:cu[3]] == 0) and np.array_equal(pool0[5], problem.pool[5])


def test_forward_bad_input_writes_nothing():
    """Bad input raises a clear error (gdn.GdnError with the library's message for what the
    library refuses, TypeError/ValueError for what Python refuses) and leaves pool and out
    exactly as they were."""
    rng = new_rng()
    problem, cu, slots = varlen_problem(rng)
    g, beta = gates_of(problem)
    raw = dict(a=problem.a, b=problem.b, A_log=problem.A_log, dt_bias=problem.dt_bias)
    pre = dict(a=None, b=None, A_log=None, dt_bias=None, g=g, beta=beta)
    too_far = slots.copy()
    too_far[3] = problem.pool.shape[0]
    decreasing = cu.copy()
    decreasing[2] = decreasing[3] + 1
    cases = [
        (gdn.GdnArgumentError, dict(slot_indices=too_far), (f"slot_indices[3] = {too_far[3]}", "num_slots")),
        (gdn.GdnArgumentError, dict(cu_seqlens=decreasing), ("cu_seqlens[",)),
        (gdn.GdnArgumentError, dict(max_seqlen=100), ("cu_seqlens[", "0..100 tokens")),
        (ValueError, dict(cu_seqlens=cu + 1), (f"cu_seqlens[{len(LENGTHS)}] = {cu[-1] + 1}", "token rows")),
        (TypeError, dict(cu_seqlens=None), ("cu_seqlens is required",)),
        (TypeError, dict(slot_indices=None), ("slot_indices is required",)),
        (TypeError, dict(g=g, beta=beta), ("g and beta are given, and so is a, b, A_log, dt_bias",)),
        (TypeError, dict(pre, beta=None), ("g and beta come together", "beta is None")),
        (TypeError, dict(a=None, b=None), ("a, b is None", "g= and beta=")),
        (TypeError, dict(pre, g=g.astype(np.float64)), ("g has dtype float64",)),
        (TypeError, dict(pre, beta=beta.astype(np.float16)), ("beta has dtype float16", "one dtype")),
        (ValueError, dict(pre, g=g[:-1]), ("g has shape",)),
        (TypeError, dict(has_initial_state=np.ones(len(LENGTHS), np.int64)), ("has_initial_state", "bool or uint8")),
        (ValueError, dict(has_initial_state=np.ones(len(LENGTHS) + 1, bool)), ("has_initial_state has shape",)),
        (gdn.GdnBackendUnavailableError if gdn.cuda_device_count() == 0 else gdn.GdnArgumentError,
         dict(backend="cuda"), ()),
        (ValueError, dict(max_seqlen=0), ("max_seqlen = 0",)),
    ]
    for kind, change, fragments in cases:
        pool = problem.pool.copy()
        out = poisoned(problem.v.shape)
        arguments = dict(q=problem.q, k=problem.k, v=problem.v, state_pool=pool, cu_seqlens=cu, slot_indices=slots,
                         out=out, backend="cpu", **raw)
        arguments.update(change)
        error = expect_error(kind, lambda: gdn.forward(**arguments), *fragments)
        if isinstance(error, gdn.GdnError):
            assert error.message and error.message in str(error)
        assert np.array_equal(pool, problem.pool), f"{change.keys()}: the pool changed ({error})"
        assert np.all(np.isnan(out)), f"{change.keys()}: out was written ({error})"
    # a head size above gdn.MAX_HEAD_DIM is the library's UNSUPPORTED_HEAD_SIZE
    big = Problem(rng, 4, 1, 1, gdn.MAX_HEAD_DIM + 8, 8, 2)
    pool = big.pool.copy()
    error = expect_error(gdn.GdnArgumentError, lambda: gdn.forward(
        *big.args()[:7], pool, cu_seqlens=np.array([0, 4]), slot_indices=np.array([1]), backend="cpu"), "head sizes up to")
    assert error.status == gdn.Status.ERR_UNSUPPORTED_HEAD_SIZE and np.array_equal(pool, big.pool)


def test_forward_odd_head_sizes():
    """Head sizes other than 128 (FLA's tests use 60, 64 and 100): K = 60, V = 100 and K = 100,
    V = 60, against the reference backend, with a prefill long enough for the chunked path."""
    rng = new_rng()
    for k, v in ((60, 100), (100, 60)):
        problem, cu, slots = varlen_problem(rng, [70, 2], h=1, hv=2, k=k, v=v)
        out, pool = run_forward(problem, cu, slots)
        ref_out, ref_pool = run_forward(problem, cu, slots, backend="reference", f64=True)
        assert_close(f"K={k} V={v} out", out, ref_out, F32_TOL)
        assert_close(f"K={k} V={v} pool", pool, ref_pool, F32_TOL)


# ----------------------------------------------------------------------------------------------
# torch: gdn.forward, its custom operator, and gdn.compat's FLA entry points
# ----------------------------------------------------------------------------------------------

def test_forward_torch_matches_numpy():
    """torch tensors give the numbers NumPy arrays give; has_initial_state as torch.bool; a
    bfloat16 pool; gdn.forward under torch.compile (torch.ops.gdn.forward_)."""
    torch = require_torch()
    rng = new_rng()
    problem, cu, slots = varlen_problem(rng, [3, 40, 1])
    flags = np.array([True, False, True])
    np_out, np_pool = run_forward(problem, cu, slots, has_initial_state=flags)
    t = {name: torch.from_numpy(getattr(problem, name)) for name in ("q", "k", "v", "a", "b", "A_log", "dt_bias")}
    pool = torch.from_numpy(problem.pool.copy())
    out = gdn.forward(t["q"], t["k"], t["v"], t["a"], t["b"], t["A_log"], t["dt_bias"], pool,
                      cu_seqlens=torch.from_numpy(cu), slot_indices=torch.from_numpy(slots),
                      has_initial_state=torch.from_numpy(flags), backend="cpu")
    assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), np_out)
    assert np.array_equal(pool.numpy(), np_pool)
    # bfloat16 state: within bfloat16 rounding of the float32 result
    bf_pool = torch.from_numpy(problem.pool).bfloat16()
    bf_out = gdn.forward(t["q"], t["k"], t["v"], t["a"], t["b"], t["A_log"], t["dt_bias"], bf_pool,
                         cu_seqlens=torch.from_numpy(cu), slot_indices=torch.from_numpy(slots),
                         has_initial_state=torch.from_numpy(flags))
    assert_close("bf16 pool out", bf_out.numpy(), np_out, 1e-2)
    if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):
        return
    from gdn import torch_ops  # noqa: F401  registers torch.ops.gdn.forward_

    g, beta = (torch.from_numpy(x) for x in gates_of(problem))
    expected_pool = torch.from_numpy(problem.pool.copy())
    expected = gdn.forward(t["q"], t["k"], t["v"], None, None, None, None, expected_pool, g=g, beta=beta,
                           cu_seqlens=torch.from_numpy(cu), slot_indices=torch.from_numpy(slots), max_seqlen=40)

    def step(q, k, v, pool):
        return gdn.forward(q, k, v, None, None, None, None, pool, g=g, beta=beta, cu_seqlens=torch.from_numpy(cu),
                           slot_indices=torch.from_numpy(slots), max_seqlen=40) * 1.0

    compiled_pool = torch.from_numpy(problem.pool.copy())
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(t["q"], t["k"], t["v"], compiled_pool), expected)
    assert torch.equal(compiled_pool, expected_pool)


def fla_inputs(torch, rng, batch, length, h=2, hv=4, k=32, v=16):
    """FLA-shaped inputs [B, T, ...] from a Problem: q, k, v, g (log-decay), beta (sigmoid), and the
    raw a, b, A_log, dt_bias they come from; h0 [B, HV, K, V] (FLA's layout)."""
    problem = Problem(rng, batch * length, h, hv, k, v, batch)
    g, beta = gates_of(problem)

    def shaped(x):
        return torch.from_numpy(np.ascontiguousarray(x)).reshape((batch, length) + x.shape[1:])

    acts = {name: shaped(getattr(problem, name)) for name in ("q", "k", "v", "a", "b")}
    acts.update(g=shaped(g), beta=shaped(beta), A_log=torch.from_numpy(problem.A_log),
                dt_bias=torch.from_numpy(problem.dt_bias))
    h0 = torch.from_numpy(np.ascontiguousarray(problem.pool.swapaxes(-1, -2)))  # [B, HV, K, V]
    return acts, h0


def forward_of(torch, acts, h0, cu, qk_l2norm=True, **options):
    """gdn.forward on token rows with the pool = a float32 copy of h0 ([N, HV, K, V]: layout kv):
    (out [R, HV, V], final pool). The tests l2-normalise q and k (use_qk_l2norm_in_kernel=True):
    without it, standard normal keys make the recurrence grow without bound."""
    pool = h0.clone()
    rows = {name: acts[name].flatten(0, 1) for name in ("q", "k", "v", "g", "beta")}
    out = gdn.forward(rows["q"], rows["k"], rows["v"], None, None, None, None, pool, g=rows["g"], beta=rows["beta"],
                      cu_seqlens=cu, slot_indices=torch.arange(h0.shape[0]), layout="kv", qk_l2norm=qk_l2norm,
                      **options)
    return out, pool


def test_compat_chunk_gated_delta_rule():
    """FLA's chunk_gated_delta_rule against gdn.forward: fixed [B, T] and varlen [1, R] batches,
    initial state kept as given, final state in FLA's [N, HV, K, V] (or state_v_first), the
    in-kernel gate and beta-sigmoid forms, float16 activations, and what it refuses."""
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    acts, h0 = fla_inputs(torch, rng, 2, 40)
    before = h0.clone()
    expected, expected_state = forward_of(torch, acts, h0, torch.tensor([0, 40, 80]), scale=0.3)
    o, state = compat.chunk_gated_delta_rule(acts["q"], acts["k"], acts["v"], acts["g"], acts["beta"], scale=0.3,
                                             initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert o.shape == (2, 40, 4, 16) and o.dtype == torch.float32 and state.dtype == torch.float32
    assert torch.equal(o.flatten(0, 1), expected) and torch.equal(state, expected_state)
    assert torch.equal(h0, before), "initial_state is an input"
    assert not o.requires_grad and not state.requires_grad
    # the numbers: the NumPy float64 recurrence on the same gates (FLA's kv state transposed)
    problem_rows = {name: acts[name].flatten(0, 1).numpy() for name in ("q", "k", "v", "a", "b")}
    np_out, np_pool = reference_decode_tokens(*problem_rows.values(), acts["A_log"].numpy(), acts["dt_bias"].numpy(),
                                              h0.numpy(), np.arange(2), num_tokens=40, cu_seqlens=np.array([0, 40, 80]),
                                              layout="kv", scale=0.3)
    assert_close("chunk o vs NumPy", o.flatten(0, 1).numpy(), np_out, F32_TOL)
    assert_close("chunk final state vs NumPy", state.numpy(), np_pool, F32_TOL)
    # no final state asked for, no initial state given (zeros)
    o2, none = compat.chunk_gated_delta_rule(acts["q"], acts["k"], acts["v"], acts["g"], acts["beta"], scale=0.3,
                                             initial_state=h0, use_qk_l2norm_in_kernel=True)
    assert none is None and torch.equal(o2, o) and torch.equal(h0, before)
    zero_out, zero_state = forward_of(torch, acts, torch.zeros_like(h0), torch.tensor([0, 40, 80]))
    o3, state3 = compat.chunk_gated_delta_rule(acts["q"], acts["k"], acts["v"], acts["g"], acts["beta"],
                                               output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert torch.equal(o3.flatten(0, 1), zero_out) and torch.equal(state3, zero_state)
    # varlen [1, R] with cu_seqlens (vLLM's and SGLang's prefill call), lengths 7, 0, 33, 40
    cu = torch.tensor([0, 7, 7, 40, 80])
    flat = {name: x.flatten(0, 1)[None] if name not in ("A_log", "dt_bias") else x for name, x in acts.items()}
    h4 = torch.randn(4, 4, 32, 16) * 0.05
    var_expected, var_state = forward_of(torch, flat, h4, cu)
    o4, state4 = compat.chunk_gated_delta_rule(flat["q"], flat["k"], flat["v"], flat["g"], flat["beta"],
                                               initial_state=h4, output_final_state=True, cu_seqlens=cu,
                                               use_qk_l2norm_in_kernel=True)
    assert o4.shape == (1, 80, 4, 16) and torch.equal(o4[0], var_expected) and torch.equal(state4, var_state)
    assert torch.equal(state4[1], h4[1]), "a sequence without tokens keeps its initial state"
    # state_v_first: [N, HV, V, K] in and out
    o5, state5 = compat.chunk_gated_delta_rule(flat["q"], flat["k"], flat["v"], flat["g"], flat["beta"],
                                               initial_state=h4.transpose(-1, -2).contiguous(),
                                               output_final_state=True, cu_seqlens=cu, state_v_first=True,
                                               use_qk_l2norm_in_kernel=True)
    assert torch.allclose(o5, o4, rtol=1e-5, atol=1e-6)
    assert torch.allclose(state5.transpose(-1, -2), state4, rtol=1e-5, atol=1e-6)
    # the gate computed in the kernel (g raw, A_log, dt_bias) and beta as a logit
    o6, state6 = compat.chunk_gated_delta_rule(acts["q"], acts["k"], acts["v"], acts["a"], acts["b"], scale=0.3,
                                               initial_state=h0, output_final_state=True,
                                               use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                                               A_log=acts["A_log"], dt_bias=acts["dt_bias"],
                                               use_beta_sigmoid_in_kernel=True, chunk_size=32)
    assert_close("in-kernel gates o", o6.numpy(), o.numpy(), F32_TOL)
    assert_close("in-kernel gates state", state6.numpy(), state.numpy(), F32_TOL)
    # float16 q, k, v with float32 g and beta (as FLA's tests pass them): o in float16
    o7, state7 = compat.chunk_gated_delta_rule(acts["q"].half(), acts["k"].half(), acts["v"].half(), acts["g"],
                                               acts["beta"], scale=0.3, initial_state=h0, output_final_state=True,
                                               use_qk_l2norm_in_kernel=True)
    assert o7.dtype == torch.float16 and state7.dtype == torch.float32
    assert_close("float16 o", o7.float().numpy(), o.numpy(), 2e-3)
    for kwargs, kind, fragment in ((dict(head_first=True), NotImplementedError, "head_first"),
                                   (dict(cp_context=object()), NotImplementedError, "cp_context"),
                                   (dict(chunk_size=48), ValueError, "chunk_size"),
                                   (dict(something_else=1), TypeError, "something_else"),
                                   (dict(allow_neg_eigval=True), ValueError, "use_beta_sigmoid_in_kernel"),
                                   (dict(initial_state=h0[:1]), ValueError, "1 states for 2 sequences")):
        expect_error(kind, lambda: compat.chunk_gated_delta_rule(acts["q"], acts["k"], acts["v"], acts["g"],
                                                                 acts["beta"], **kwargs), fragment)


def test_compat_fused_recurrent_precomputed_gates_any_length():
    """FLA's fused_recurrent_gated_delta_rule with precomputed g and beta (FLA's default form and
    vLLM's decode call): 40 tokens per sequence against chunk_gated_delta_rule and the raw-gate
    form; g=None (no decay) and beta=None (beta = 1); a vLLM pool updated in place."""
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    acts, h0 = fla_inputs(torch, rng, 3, 40)
    o, state = compat.fused_recurrent_gated_delta_rule(acts["q"], acts["k"], acts["v"], g=acts["g"],
                                                       beta=acts["beta"], initial_state=h0, output_final_state=True,
                                                       use_qk_l2norm_in_kernel=True)
    chunk_o, chunk_state = compat.chunk_gated_delta_rule(acts["q"], acts["k"], acts["v"], acts["g"], acts["beta"],
                                                         initial_state=h0, output_final_state=True,
                                                         use_qk_l2norm_in_kernel=True)
    assert torch.equal(o, chunk_o) and torch.equal(state, chunk_state)
    raw_o, raw_state = compat.fused_recurrent_gated_delta_rule(acts["q"], acts["k"], acts["v"], g=acts["a"],
                                                               beta=acts["b"], initial_state=h0,
                                                               output_final_state=True, use_qk_l2norm_in_kernel=True,
                                                               use_gate_in_kernel=True, A_log=acts["A_log"],
                                                               dt_bias=acts["dt_bias"],
                                                               use_beta_sigmoid_in_kernel=True)
    assert_close("precomputed vs in-kernel o", o.numpy(), raw_o.numpy(), F32_TOL)
    assert_close("precomputed vs in-kernel state", state.numpy(), raw_state.numpy(), F32_TOL)
    # one form in the kernel, the other precomputed
    mixed_o, _ = compat.fused_recurrent_gated_delta_rule(acts["q"], acts["k"], acts["v"], g=acts["a"],
                                                         beta=acts["beta"], initial_state=h0,
                                                         use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                                                         A_log=acts["A_log"], dt_bias=acts["dt_bias"])
    assert_close("raw g with precomputed beta", mixed_o.numpy(), o.numpy(), F32_TOL)
    # g=None: no decay; beta=None: beta = 1
    ones = torch.ones_like(acts["beta"])
    no_gate, _ = compat.fused_recurrent_gated_delta_rule(acts["q"], acts["k"], acts["v"], initial_state=h0,
                                                         use_qk_l2norm_in_kernel=True)
    explicit, _ = compat.fused_recurrent_gated_delta_rule(acts["q"], acts["k"], acts["v"], g=torch.zeros_like(ones),
                                                          beta=ones, initial_state=h0, use_qk_l2norm_in_kernel=True)
    assert torch.equal(no_gate, explicit) and torch.all(torch.isfinite(no_gate))
    # vLLM's decode: a pool [slots, HV, V, K] updated in place at ssm_state_indices, one token each
    pool = torch.randn(5, 4, 16, 32) * 0.05
    indices = torch.tensor([3, -1, 0], dtype=torch.int32)
    one = {name: acts[name][:, :1] for name in ("q", "k", "v", "a", "b", "g", "beta")}
    expected_pool = pool.clone()
    expected = gdn.decode(*(one[n][:, 0] for n in ("q", "k", "v", "a", "b")), acts["A_log"], acts["dt_bias"],
                          expected_pool, indices, qk_l2norm=True)
    flat = {name: x.flatten(0, 1)[None] for name, x in one.items()}
    o_pool, returned = compat.fused_recurrent_gated_delta_rule(flat["q"], flat["k"], flat["v"], g=flat["g"],
                                                               beta=flat["beta"], initial_state=pool,
                                                               inplace_final_state=True,
                                                               cu_seqlens=torch.arange(4, dtype=torch.int32),
                                                               ssm_state_indices=indices,
                                                               use_qk_l2norm_in_kernel=True)
    assert returned is pool and torch.all(o_pool[0, 1] == 0)
    assert_close("vLLM decode o", o_pool[0].numpy(), expected.numpy(), F32_TOL)
    assert_close("vLLM decode pool", pool.numpy(), expected_pool.numpy(), F32_TOL)


if __name__ == "__main__":
    run(globals())
