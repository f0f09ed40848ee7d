"""CPU tests of the gdn Python binding: NumPy only (torch tests skip without torch).

    python3 -m pytest tests/python          or          python3 tests/python/test_decode_cpu.py

gdn.decode on the cpu backend is compared with the float64 reference backend of the same
library and with an independent NumPy float64 implementation of SPEC section 1, on fresh random
inputs; then padding, strides, layouts, index dtypes, errors and the shared reference vectors.
gdn.decode_tokens (multi-token decode, SPEC operation 2) likewise, the NumPy implementation
applied token by token: fixed T, varlen with an empty sequence, token_slots snapshots,
num_accepted rollback over two calls, padding rows, errors; then the compat wrappers' multi-token
paths and the torch custom operators (torch tests skip without torch).
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gdn_testlib import (Problem, bf16_round, import_gdn, new_rng, read_gdnv, reference_decode,  # noqa: E402
                         reference_decode_tokens, rel_err, require_torch, run, skip, vectors_dir)

import numpy as np  # noqa: E402

gdn = import_gdn()

F32_TOL = 1e-5       # SPEC 6: float32 activations and state against the float64 reference
F16_OUT_TOL = 1e-3   # float16 activations: the output is rounded to float16
BF16_OUT_TOL = 8e-3  # bfloat16 activations: the output is rounded to bfloat16
EXACT_TOL = 1e-12    # float64 reference backend against the float64 NumPy implementation

# (N, H, HV, K, V, slots): GQA groups of 1, 2 and 3, odd sizes, the Qwen3-Next head shape.
SHAPES = [(3, 1, 1, 16, 16, 4), (5, 2, 4, 32, 16, 8), (4, 2, 6, 24, 40, 5), (2, 16, 32, 128, 128, 3),
          (1, 4, 8, 128, 128, 2), (7, 3, 3, 8, 8, 9)]


def poisoned_out(problem, dtype=np.float32):
    """An output buffer full of NaN: every element the call should write must be written."""
    return np.full(problem.v.shape, np.nan, dtype=dtype)


def slots_for(rng, num_seqs, num_slots, padding=0):
    """Distinct slots for num_seqs rows in random order, `padding` of them -1."""
    slots = rng.permutation(num_slots)[:num_seqs].astype(np.int64)
    slots[rng.permutation(num_seqs)[:padding]] = -1
    return slots


def reference_backend(problem, slots, write_slots=None, **options):
    """gdn.decode on the float64 reference backend, on float64 copies: (out, pool after)."""
    f64 = [np.asarray(x, np.float64) for x in (problem.q, problem.k, problem.v, problem.a, problem.b)]
    pool = problem.pool.astype(np.float64)
    out = gdn.decode(*f64, problem.A_log, problem.dt_bias, pool, slots, write_slot_indices=write_slots,
                     backend="reference", layout=problem.layout, **options)
    return out, pool


def cpu_backend(problem, slots, write_slots=None, **options):
    """gdn.decode on the cpu backend into a poisoned out and a copy of the pool: (out, pool after)."""
    pool = problem.pool.copy()
    out = poisoned_out(problem)
    result = gdn.decode(problem.q, problem.k, problem.v, problem.a, problem.b, problem.A_log, problem.dt_bias,
                        pool, slots, out=out, write_slot_indices=write_slots, backend="cpu", layout=problem.layout,
                        **options)
    assert result is out
    return out, pool


def numpy_reference(problem, slots, write_slots=None, **options):
    return reference_decode(problem.q, problem.k, problem.v, problem.a, problem.b, problem.A_log, problem.dt_bias,
                            problem.pool, slots, write_slots, layout=problem.layout, **options)


def assert_close(name, x, ref, tol):
    error = rel_err(x, ref)
    assert error <= tol, f"{name}: relative error {error:.3e} > {tol:.1e}"
    return error


def check_against_both_references(problem, slots, write_slots=None, **options):
    """cpu vs the reference backend (SPEC tolerance), and the reference backend vs NumPy."""
    out, pool = cpu_backend(problem, slots, write_slots, **options)
    ref_out, ref_pool = reference_backend(problem, slots, write_slots, **options)
    np_out, np_pool = numpy_reference(problem, slots, write_slots, **options)
    assert np.all(np.isfinite(out)), "some output element was not written"
    assert_close("reference backend out vs NumPy", ref_out, np_out, EXACT_TOL)
    assert_close("reference backend pool vs NumPy", ref_pool, np_pool, EXACT_TOL)
    errors = (assert_close("cpu out", out, ref_out, F32_TOL), assert_close("cpu pool", pool, ref_pool, F32_TOL))
    return errors


# ----------------------------------------------------------------------------------------------
# The library and the package
# ----------------------------------------------------------------------------------------------

def test_library_and_package_versions():
    assert gdn.library_version() == gdn.__version__, (gdn.library_version(), gdn.__version__)
    header = (Path(__file__).resolve().parents[2] / "include" / "gdn.h").read_text()
    parts = [re.search(rf"#define GDN_VERSION_{part} (\d+)", header).group(1) for part in ("MAJOR", "MINOR", "PATCH")]
    assert gdn.__version__ == ".".join(parts), (gdn.__version__, parts)
    assert gdn.backend_built("cpu") and gdn.backend_built("reference")
    print(f"    gdn {gdn.__version__} from {gdn.library_path()}, cuda built: {gdn.backend_built('cuda')}, "
          f"cuda devices: {gdn.cuda_device_count()}")


def test_ctypes_mirror_matches_the_header():
    """Every field offset and size of gdn_decode_params, every enum value and the limits, as the C
    compiler sees gdn.h, against the ctypes mirror (skipped without a C compiler)."""
    from gdn._lib import Backend, DecodeParams, DType, HeadMap, Layout, Status

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        skip("no C compiler to read the header's layout with")
    fields = [name for name, _ in DecodeParams._fields_]
    enums = {"GDN_": Status, "GDN_DTYPE_": DType, "GDN_LAYOUT_": Layout, "GDN_HEAD_MAP_": HeadMap,
             "GDN_BACKEND_": Backend}
    constants = [prefix + member.name for prefix, enum in enums.items() for member in enum]
    lines = [f'printf("{f} %zu %zu\\n", offsetof(gdn_decode_params, {f}), sizeof(((gdn_decode_params *)0)->{f}));'
             for f in fields]
    lines += [f'printf("{c} %d\\n", (int){c});' for c in constants]
    lines.append('printf("sizeof %zu\\n", sizeof(gdn_decode_params));')
    lines.append('printf("GDN_MAX_TOKENS %d\\nGDN_MAX_HEAD_DIM %d\\n", GDN_MAX_TOKENS, GDN_MAX_HEAD_DIM);')
    source = "#include <stddef.h>\n#include <stdio.h>\n#include <gdn.h>\nint main(void) {\n" + "\n".join(lines) + \
        "\nreturn 0;\n}\n"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "layout.c").write_text(source)
        include = Path(__file__).resolve().parents[2] / "include"
        subprocess.run([compiler, "-I", str(include), "-o", str(Path(tmp, "layout")), str(Path(tmp, "layout.c"))],
                       check=True)
        seen = dict(line.split(" ", 1) for line in subprocess.run([str(Path(tmp, "layout"))], check=True,
                                                                   capture_output=True, text=True).stdout.splitlines())
    for name in fields:
        field = getattr(DecodeParams, name)
        mirrored = f"{field.offset} {field.size}"
        assert seen[name] == mirrored, f"{name}: offset and size {seen[name]} in C, {mirrored} in ctypes"
    for prefix, enum in enums.items():
        for member in enum:
            assert int(seen[prefix + member.name]) == member.value, f"{prefix}{member.name}"
    assert int(seen["sizeof"]) == ctypes.sizeof(DecodeParams)
    assert (int(seen["GDN_MAX_TOKENS"]), int(seen["GDN_MAX_HEAD_DIM"])) == (gdn.MAX_TOKENS, gdn.MAX_HEAD_DIM)


# ----------------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------------

def test_cpu_matches_references_on_random_shapes():
    rng = new_rng()
    for num_seqs, h, hv, k, v, num_slots in SHAPES:
        problem = Problem(rng, num_seqs, h, hv, k, v, num_slots)
        slots = slots_for(rng, num_seqs, num_slots)
        out_err, pool_err = check_against_both_references(problem, slots)
        print(f"    N={num_seqs} H={h} HV={hv} K={k} V={v}: out {out_err:.1e} pool {pool_err:.1e}")


def test_options_tiled_no_l2norm_scale():
    rng = new_rng()
    problem = Problem(rng, 4, 2, 6, 32, 32, 6)
    slots = slots_for(rng, 4, 6)
    check_against_both_references(problem, slots, head_map="tiled")
    check_against_both_references(problem, slots, qk_l2norm=False, scale=0.05)
    check_against_both_references(problem, slots, scale=0.3, head_map="tiled", qk_l2norm=False)
    # scale None and 0 both mean 1/sqrt(K)
    default, _ = cpu_backend(problem, slots)
    explicit, _ = cpu_backend(problem, slots, scale=32 ** -0.5)
    none, _ = cpu_backend(problem, slots, scale=None)
    assert rel_err(default, explicit) < 1e-6 and np.array_equal(default, none)


def test_float16_activations():
    rng = new_rng()
    problem = Problem(rng, 5, 2, 4, 64, 32, 5)
    for name in ("q", "k", "v", "a", "b"):
        setattr(problem, name, getattr(problem, name).astype(np.float16))
    slots = slots_for(rng, 5, 5, padding=1)
    pool = problem.pool.copy()
    out = gdn.decode(*problem.args()[:7], pool, slots, backend="cpu")
    assert out.dtype == np.float16 and out.shape == problem.v.shape
    ref_out, ref_pool = numpy_reference(problem, slots)  # on the float16 values themselves
    assert_close("f16 out", out, ref_out, F16_OUT_TOL)
    assert_close("pool (f32 state)", pool, ref_pool, F32_TOL)


def test_multi_step_state_carries_over():
    """16 steps on one pool: the state read at each step is the one written at the last."""
    rng = new_rng()
    base = Problem(rng, 3, 2, 4, 32, 32, 4)
    slots = np.array([2, 0, 3])
    pool, ref_pool = base.pool.copy(), base.pool.astype(np.float64)
    for step in range(16):
        step_inputs = Problem(rng, 3, 2, 4, 32, 32, 4)
        step_inputs.A_log, step_inputs.dt_bias = base.A_log, base.dt_bias
        out = gdn.decode(*step_inputs.args()[:7], pool, slots, backend="cpu")
        ref_out, ref_pool = reference_decode(*step_inputs.args()[:7], ref_pool, slots)
        assert_close(f"step {step} out", out, ref_out, F32_TOL)
    assert_close("pool after 16 steps", pool, ref_pool, F32_TOL)
    assert np.array_equal(pool[1], base.pool[1]), "slot 1 is used by no sequence and must not change"


def test_num_threads_do_not_change_results():
    rng = new_rng()
    problem = Problem(rng, 9, 2, 8, 64, 64, 9)
    slots = slots_for(rng, 9, 9)
    one, pool_one = cpu_backend(problem, slots, num_threads=1)
    many, pool_many = cpu_backend(problem, slots, num_threads=5)
    assert np.array_equal(one, many) and np.array_equal(pool_one, pool_many)


# ----------------------------------------------------------------------------------------------
# Slots: padding, null slot, write slots, index dtypes
# ----------------------------------------------------------------------------------------------

def test_padding_rows_write_zeros_and_leave_the_state():
    rng = new_rng()
    problem = Problem(rng, 6, 2, 4, 32, 16, 8)
    slots = np.array([5, -1, 0, -7, 2, -1], dtype=np.int64)
    out, pool = cpu_backend(problem, slots)
    check_against_both_references(problem, slots)
    padding = slots < 0
    assert np.all(out[padding] == 0), "padding rows must be written as zeros"
    untouched = [s for s in range(8) if s not in slots]
    assert np.array_equal(pool[untouched], problem.pool[untouched]), "slots of no sequence must not change"


def test_null_slot_zero():
    rng = new_rng()
    problem = Problem(rng, 4, 1, 2, 16, 16, 4)
    slots = np.array([0, 3, 1, 2])
    out, pool = cpu_backend(problem, slots, null_slot_zero=True)
    check_against_both_references(problem, slots, null_slot_zero=True)
    assert np.all(out[0] == 0) and np.array_equal(pool[0], problem.pool[0])
    out_plain, pool_plain = cpu_backend(problem, slots)
    assert not np.all(out_plain[0] == 0) and not np.array_equal(pool_plain[0], problem.pool[0])


def test_write_slot_indices():
    rng = new_rng()
    problem = Problem(rng, 3, 2, 4, 32, 32, 7)
    read, write = np.array([0, 1, 2]), np.array([4, -1, 6])
    out, pool = cpu_backend(problem, read, write)
    check_against_both_references(problem, read, write)
    assert np.array_equal(pool[:4], problem.pool[:4]), "read slots are only read"
    assert np.array_equal(pool[5], problem.pool[5])
    assert not np.array_equal(pool[4], problem.pool[4]) and not np.array_equal(pool[6], problem.pool[6])
    same_slot_out, _ = cpu_backend(problem, read)
    assert np.array_equal(out, same_slot_out), "the output does not depend on where the state goes"


def test_int32_indices():
    rng = new_rng()
    problem = Problem(rng, 4, 2, 4, 32, 32, 6)
    slots64 = np.array([3, -1, 0, 5], dtype=np.int64)
    out32, pool32 = cpu_backend(problem, slots64.astype(np.int32), np.array([1, -1, 2, 4], dtype=np.int32))
    out64, pool64 = cpu_backend(problem, slots64, np.array([1, -1, 2, 4], dtype=np.int64))
    assert np.array_equal(out32, out64) and np.array_equal(pool32, pool64)


# ----------------------------------------------------------------------------------------------
# Memory layouts: strided rows, token dimension, kv state
# ----------------------------------------------------------------------------------------------

def test_strided_slices_of_packed_projections():
    """q, k, v sliced out of one [N, 2*H*K + HV*V] projection, b and a out of one [N, 2*HV],
    out a slice of a wider buffer: each with its own token stride."""
    rng = new_rng()
    n, h, hv, k, v = 5, 2, 4, 32, 16
    problem = Problem(rng, n, h, hv, k, v, 6)
    slots = slots_for(rng, n, 6, padding=1)
    qkv = np.concatenate([problem.q.reshape(n, -1), problem.k.reshape(n, -1), problem.v.reshape(n, -1)], axis=1)
    ba = np.concatenate([problem.b, problem.a], axis=1)
    q = qkv[:, :h * k].reshape(n, h, k)
    kk = qkv[:, h * k:2 * h * k].reshape(n, h, k)
    vv = qkv[:, 2 * h * k:].reshape(n, hv, v)
    assert not q.flags.c_contiguous and np.shares_memory(q, qkv), "the test needs strided views"
    wide = np.full((n, hv * v + 24), 7.0, dtype=np.float32)
    out = wide[:, 8:8 + hv * v].reshape(n, hv, v)
    pool = problem.pool.copy()
    gdn.decode(q, kk, vv, ba[:, hv:], ba[:, :hv], problem.A_log, problem.dt_bias, pool, slots, out=out,
               backend="cpu")
    dense_out, dense_pool = cpu_backend(problem, slots)
    assert np.array_equal(out, dense_out) and np.array_equal(pool, dense_pool)
    assert np.all(wide[:, :8] == 7.0) and np.all(wide[:, 8 + hv * v:] == 7.0), "wrote outside out's rows"


def test_paged_pool_views():
    """A pool whose slots are further apart than one slot (vLLM's GDN + conv page): storage[:, :HV]
    and storage[:, 1:] of a [slots, HV+1, V, K] storage, for decode and decode_tokens; the same
    outputs and states as the packed pool, bit for bit, and the rest of the storage untouched."""
    rng = new_rng()
    n, h, hv, k, v, num_slots = 4, 2, 4, 16, 8, 6
    problem = Problem(rng, n, h, hv, k, v, num_slots)
    slots = slots_for(rng, n, num_slots, padding=1)
    dense_out, dense_pool = cpu_backend(problem, slots)
    for where in ("after", "before"):
        storage = rng.standard_normal((num_slots, hv + 1, v, k)).astype(np.float32)
        view = storage[:, :hv] if where == "after" else storage[:, 1:]
        view[...] = problem.pool
        before = storage.copy()
        out = gdn.decode(problem.q, problem.k, problem.v, problem.a, problem.b, problem.A_log, problem.dt_bias,
                         view, slots, backend="cpu")
        assert np.array_equal(out, dense_out) and np.array_equal(view, dense_pool), where
        gap = storage[:, hv] if where == "after" else storage[:, 0]
        assert np.array_equal(gap, before[:, hv] if where == "after" else before[:, 0]), f"gap {where} written"
    # decode_tokens with a snapshot per token into the paged view
    tokens = 2
    tp = Problem(rng, n * tokens, h, hv, k, v, 12)
    snap = np.arange(4, 4 + n * tokens, dtype=np.int64).reshape(n, tokens)
    start = np.array([0, 1, 2, 3])
    dense_out, dense_pool = tokens_cpu(tp, (n, tokens), slot_indices=start, token_slots=snap)
    storage = rng.standard_normal((12, hv + 1, v, k)).astype(np.float32)
    view = storage[:, 1:]
    view[...] = tp.pool
    before = storage[:, 0].copy()
    out = gdn.decode_tokens(*token_acts(tp, (n, tokens)), tp.A_log, tp.dt_bias, view, slot_indices=start,
                            token_slots=snap, backend="cpu")
    assert np.array_equal(out.reshape(dense_out.shape), dense_out) and np.array_equal(view, dense_pool)
    assert np.array_equal(storage[:, 0], before)
    # slots closer than one slot apart, or inner dimensions strided: refused before any write
    overlapping = np.lib.stride_tricks.as_strided(problem.pool.copy(), shape=problem.pool.shape,
                                                  strides=(problem.pool.strides[1],) + problem.pool.strides[1:])
    expect_error(ValueError, lambda: gdn.decode(problem.q, problem.k, problem.v, problem.a, problem.b, problem.A_log,
                                                problem.dt_bias, overlapping, slots, backend="cpu"),
                 "state_pool", "overlap")
    strided_rows = np.zeros((num_slots, hv, v, 2 * k), np.float32)[..., ::2]
    expect_error(ValueError, lambda: gdn.decode(problem.q, problem.k, problem.v, problem.a, problem.b, problem.A_log,
                                                problem.dt_bias, strided_rows, slots, backend="cpu"),
                 "state_pool", "contiguous")


def test_torch_paged_pool_view():
    torch = require_torch()
    rng = new_rng()
    n, h, hv, k, v, num_slots = 3, 2, 4, 16, 16, 5
    problem = Problem(rng, n, h, hv, k, v, num_slots)
    slots = slots_for(rng, n, num_slots, padding=1)
    dense_out, dense_pool = cpu_backend(problem, slots)
    storage = torch.randn(num_slots, hv + 1, v, k)
    view = storage[:, 1:]
    view.copy_(torch.from_numpy(problem.pool))
    gap = storage[:, 0].clone()
    t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (problem.q, problem.k, problem.v, problem.a, problem.b)]
    out = gdn.decode(*t, torch.from_numpy(problem.A_log), torch.from_numpy(problem.dt_bias), view,
                     torch.from_numpy(slots), backend="cpu")
    assert np.array_equal(out.numpy(), dense_out) and np.array_equal(view.numpy(), dense_pool)
    assert torch.equal(storage[:, 0], gap)


def test_token_dimension_of_one():
    rng = new_rng()
    problem = Problem(rng, 3, 2, 4, 16, 16, 3)
    slots = np.array([2, 0, 1])
    pool = problem.pool.copy()
    with_t = [x[:, None] for x in (problem.q, problem.k, problem.v, problem.a, problem.b)]
    out = gdn.decode(*with_t, problem.A_log, problem.dt_bias, pool, slots, backend="cpu")
    assert out.shape == (3, 1, 4, 16)
    dense_out, dense_pool = cpu_backend(problem, slots)
    assert np.array_equal(out[:, 0], dense_out) and np.array_equal(pool, dense_pool)


def test_kv_layout_is_the_transposed_vk_layout():
    rng = new_rng()
    problem = Problem(rng, 4, 2, 4, 32, 16, 5, layout="kv")
    slots = slots_for(rng, 4, 5, padding=1)
    check_against_both_references(problem, slots)
    out_kv, pool_kv = cpu_backend(problem, slots)
    problem.layout, problem.pool = "vk", np.ascontiguousarray(problem.pool.swapaxes(-1, -2))
    out_vk, pool_vk = cpu_backend(problem, slots)
    assert_close("kv vs vk out", out_kv, out_vk, 1e-6)
    assert_close("kv vs vk pool", pool_kv.swapaxes(-1, -2), pool_vk, 1e-6)


def test_zero_sequences():
    rng = new_rng()
    problem = Problem(rng, 0, 2, 4, 16, 16, 3)
    out, pool = cpu_backend(problem, np.zeros(0, dtype=np.int64))
    assert out.shape == (0, 4, 16) and np.array_equal(pool, problem.pool)


# ----------------------------------------------------------------------------------------------
# Errors: the exception names the problem and nothing is written
# ----------------------------------------------------------------------------------------------

def expect_error(kind, call, *fragments):
    """call() must raise `kind` whose message contains every fragment; returns the exception."""
    try:
        call()
    except kind as error:
        message = str(error)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in the message {message!r}"
        return error
    except Exception as error:
        raise AssertionError(f"expected {kind.__name__}, got {type(error).__name__}: {error}") from error
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


def test_errors_python_side():
    rng = new_rng()
    p = Problem(rng, 3, 2, 4, 16, 16, 4)
    slots = np.array([0, 1, 2])
    A, dt = p.A_log, p.dt_bias

    def call(**changes):
        args = dict(q=p.q, k=p.k, v=p.v, a=p.a, b=p.b, A_log=A, dt_bias=dt, state_pool=p.pool.copy(),
                    slot_indices=slots)
        args.update(changes)
        return lambda: gdn.decode(**args, backend="cpu")

    expect_error(TypeError, call(q=p.q.astype(np.int32)), "q", "int32")
    expect_error(TypeError, call(k=p.k.astype(np.float16)), "k", "float16", "q")
    expect_error(TypeError, call(A_log=A.astype(np.float64)), "A_log", "float64")
    expect_error(TypeError, call(state_pool=p.pool.astype(np.float16)), "state_pool", "float16")
    expect_error(TypeError, call(slot_indices=slots.astype(np.float32)), "slot_indices")
    expect_error(TypeError, call(q=p.q.tolist()), "q", "list")
    expect_error(ValueError, call(k=p.k[:, :1]), "k", "shape")
    expect_error(ValueError, call(v=p.v[:2]), "v", "shape")
    expect_error(ValueError, call(a=p.a[:, :3]), "a", "shape")
    expect_error(ValueError, call(dt_bias=dt[:3]), "dt_bias")
    expect_error(ValueError, call(slot_indices=slots[:2]), "slot_indices")
    expect_error(ValueError, call(state_pool=p.pool[:, :2].copy()), "state_pool", "[slots, HV, V, K]")
    expect_error(ValueError, call(q=np.ones((3, 2, 32), np.float32)[:, :, ::2]), "q", "contiguous")
    expect_error(ValueError, call(v=np.asfortranarray(p.v)), "v", "contiguous")
    expect_error(ValueError, call(state_pool=np.ascontiguousarray(p.pool.swapaxes(0, 1)).swapaxes(0, 1)),
                 "state_pool", "contiguous")
    expect_error(ValueError, call(q=np.broadcast_to(p.q[:1], p.q.shape)), "q", "stride")
    readonly = p.pool.copy()
    readonly.flags.writeable = False
    expect_error(ValueError, call(state_pool=readonly), "state_pool", "read-only")
    expect_error(ValueError, lambda: gdn.decode(*p.args(), slots, layout="kvv"), "layout", "'vk'")
    expect_error(ValueError, lambda: gdn.decode(*p.args(), slots, head_map="grouped2"), "head_map")
    expect_error(ValueError, lambda: gdn.decode(*p.args(), slots, backend="gpu"), "backend", "'cuda'")


def test_errors_from_the_library_write_nothing():
    rng = new_rng()
    p = Problem(rng, 3, 2, 4, 16, 16, 4)
    pool = p.pool.copy()
    out = poisoned_out(p)

    def run_with(slots, **options):
        return lambda: gdn.decode(p.q, p.k, p.v, p.a, p.b, p.A_log, p.dt_bias, pool, slots, out=out, **options)

    error = expect_error(gdn.GdnArgumentError, run_with(np.array([0, 4, 1]), backend="cpu"),
                         "slot_indices[1] = 4 but num_slots = 4")
    assert error.status == gdn.Status.ERR_SLOT_OUT_OF_RANGE and isinstance(error, ValueError)
    expect_error(gdn.GdnArgumentError, run_with(np.array([0, 1, 2]), write_slot_indices=np.array([0, 9, 1])),
                 "write_slot_indices[1] = 9")
    error = expect_error(gdn.GdnArgumentError, run_with(np.array([0, 1, 2]), scale=float("inf")), "scale")
    assert error.status == gdn.Status.ERR_INVALID_ARGUMENT
    error = expect_error(gdn.GdnArgumentError, run_with(np.array([0, 1, 2]), num_threads=-2), "num_threads")
    # float64 activations are the reference backend's only
    f64 = [x.astype(np.float64) for x in (p.q, p.k, p.v, p.a, p.b)]
    error = expect_error(gdn.GdnArgumentError, lambda: gdn.decode(*f64, p.A_log, p.dt_bias, pool, np.array([0, 1, 2]),
                                                                  backend="cpu"), "f64")
    assert error.status == gdn.Status.ERR_UNSUPPORTED_DTYPE
    # HV not a multiple of H
    q3 = np.ones((3, 3, 16), np.float32)
    error = expect_error(gdn.GdnArgumentError, lambda: gdn.decode(q3, q3, p.v, p.a, p.b, p.A_log, p.dt_bias, pool,
                                                                  np.array([0, 1, 2]), out=out), "multiple")
    assert error.status == gdn.Status.ERR_INVALID_SHAPE
    if gdn.cuda_device_count() == 0:
        expect_error(gdn.GdnBackendUnavailableError, run_with(np.array([0, 1, 2]), backend="cuda"), "cuda")
    assert np.array_equal(pool, p.pool), "a refused call changed the state pool"
    assert np.all(np.isnan(out)), "a refused call wrote the output"


def test_decode_backend_for():
    rng = new_rng()
    p = Problem(rng, 2, 1, 2, 16, 16, 2)
    slots = np.array([0, 1])
    assert gdn.decode_backend_for(*p.args(), slots, backend="cpu") == "cpu"
    assert gdn.decode_backend_for(*p.args(), slots, backend="reference") == "reference"
    if not os.environ.get("GDN_BACKEND"):
        assert gdn.decode_backend_for(*p.args(), slots) == "cpu"


# ----------------------------------------------------------------------------------------------
# The shared reference vectors, token by token on the cpu backend
# ----------------------------------------------------------------------------------------------

def run_vector_file(path):
    """(out error, pool error, token-state error) of one .gdnv file, its T tokens run as T steps."""
    arrays = read_gdnv(path)
    q, k, v, a, b = (arrays[name] for name in ("q", "k", "v", "a", "b"))
    slots = arrays["slot_indices"]
    l2norm, tiled = (bool(x) for x in arrays["flags"])
    pool = arrays["pool_in"].copy()
    out = np.full(arrays["out"].shape, np.nan, dtype=np.float32)
    token_errors = []
    for t in range(q.shape[1]):
        # q[:, t] etc. are strided views: rows of sequence n lie T tokens apart.
        gdn.decode(q[:, t], k[:, t], v[:, t], a[:, t], b[:, t], arrays["A_log"], arrays["dt_bias"], pool, slots,
                   out=out[:, t], scale=float(arrays["scale"][0]), qk_l2norm=l2norm,
                   head_map="tiled" if tiled else "grouped", backend="cpu")
        if "token_states" in arrays:
            live = slots >= 0
            token_errors.append(rel_err(pool[slots[live]], arrays["token_states"][live, t]))
    assert np.all(np.isfinite(out)), "some output element was not written"
    return rel_err(out, arrays["out"]), rel_err(pool, arrays["pool_out"]), max(token_errors, default=0.0)


def test_reference_vectors():
    directory = vectors_dir()
    if directory is None:
        skip("REFERENCE VECTORS NOT FOUND: set GDN_VECTORS, keep ../shared/vectors beside the checkout, or run "
             "tests/vectors/ensure.sh (the C suite fails on this)")
    files = sorted(directory.glob("*.gdnv"))
    assert files, f"no .gdnv files in {directory}"
    for path in files:
        errors = run_vector_file(path)
        print(f"    {path.stem:26s} out {errors[0]:.2e} pool {errors[1]:.2e} token states {errors[2]:.2e}")
        assert max(errors) <= F32_TOL, f"{path.name}: errors {errors} above {F32_TOL}"


# ----------------------------------------------------------------------------------------------
# Multi-token decode (gdn.decode_tokens): cpu vs the reference backend vs NumPy, token by token
# ----------------------------------------------------------------------------------------------

def token_acts(problem, shape=None):
    """q, k, v, a, b of a Problem whose rows are token rows, as [N, T, ...] when shape = (N, T)."""
    acts = [problem.q, problem.k, problem.v, problem.a, problem.b]
    return [x.reshape(tuple(shape) + x.shape[1:]) for x in acts] if shape else acts


def tokens_cpu(problem, shape=None, **options):
    """decode_tokens on the cpu backend into a poisoned out and a copy of the pool: (out as token
    rows, pool after)."""
    acts = token_acts(problem, shape)
    pool = problem.pool.copy()
    out = np.full(acts[2].shape, np.nan, dtype=acts[2].dtype)
    result = gdn.decode_tokens(*acts, problem.A_log, problem.dt_bias, pool, out=out, backend="cpu",
                               layout=problem.layout, **options)
    assert result is out
    return out.reshape(problem.v.shape), pool


def tokens_reference_backend(problem, shape=None, **options):
    """decode_tokens on the float64 reference backend, on float64 copies: (out rows, pool after)."""
    acts = [x.astype(np.float64) for x in token_acts(problem, shape)]
    pool = problem.pool.astype(np.float64)
    out = np.full(acts[2].shape, np.nan)
    gdn.decode_tokens(*acts, problem.A_log, problem.dt_bias, pool, out=out, backend="reference", layout=problem.layout,
                      **options)
    return out.reshape(problem.v.shape), pool


def tokens_numpy(problem, shape=None, **options):
    """The independent NumPy implementation with decode_tokens' keyword names."""
    options = dict(options)
    slots, write_slots = options.pop("slot_indices", None), options.pop("write_slot_indices", None)
    num_tokens = shape[1] if shape else options.pop("num_tokens", None) or 1
    options.pop("num_tokens", None)
    options.pop("num_threads", None)
    return reference_decode_tokens(problem.q, problem.k, problem.v, problem.a, problem.b, problem.A_log,
                                   problem.dt_bias, problem.pool, slots, num_tokens=num_tokens, write_slots=write_slots,
                                   layout=problem.layout, **options)


def check_tokens_against_both_references(problem, shape=None, **options):
    """cpu vs the reference backend (SPEC tolerance) and the reference backend vs NumPy; out rows
    are compared where the spec writes them, and must stay unwritten (NaN) everywhere else."""
    out, pool = tokens_cpu(problem, shape, **options)
    ref_out, ref_pool = tokens_reference_backend(problem, shape, **options)
    np_out, np_pool = tokens_numpy(problem, shape, **options)
    written = ~np.isnan(np_out)
    assert np.array_equal(~np.isnan(out), written), "cpu: output rows written other than the spec's"
    assert np.array_equal(~np.isnan(ref_out), written), "reference: output rows written other than the spec's"
    assert_close("reference backend out vs NumPy", ref_out[written], np_out[written], EXACT_TOL)
    assert_close("reference backend pool vs NumPy", ref_pool, np_pool, EXACT_TOL)
    return (assert_close("cpu out", out[written], ref_out[written], F32_TOL),
            assert_close("cpu pool", pool, ref_pool, F32_TOL))


def test_tokens_fixed_T_matches_references():
    rng = new_rng()
    for tokens in (2, 4):
        for num_seqs, h, hv, k, v, num_slots in SHAPES:
            problem = Problem(rng, num_seqs * tokens, h, hv, k, v, num_slots)
            slots = slots_for(rng, num_seqs, num_slots, padding=1 if num_seqs > 2 else 0)
            errors = check_tokens_against_both_references(problem, (num_seqs, tokens), slot_indices=slots)
            # the same call on packed token rows [N*T, ...] with num_tokens
            rows_out, rows_pool = tokens_cpu(problem, slot_indices=slots, num_tokens=tokens)
            out, pool = tokens_cpu(problem, (num_seqs, tokens), slot_indices=slots)
            assert np.array_equal(rows_out, out) and np.array_equal(rows_pool, pool)
            print(f"    T={tokens} N={num_seqs} H={h} HV={hv} K={k} V={v}: out {errors[0]:.1e} pool {errors[1]:.1e}")


def test_tokens_options_layouts_and_write_slots():
    rng = new_rng()
    n, tokens = 4, 3
    problem = Problem(rng, n * tokens, 2, 6, 32, 24, 9, layout="kv")
    slots = np.array([0, 3, -1, 5])
    check_tokens_against_both_references(problem, (n, tokens), slot_indices=slots, head_map="tiled", qk_l2norm=False,
                                         scale=0.07)
    check_tokens_against_both_references(problem, (n, tokens), slot_indices=slots,
                                         write_slot_indices=np.array([6, -1, 7, 8]))
    problem.layout, problem.pool = "vk", np.ascontiguousarray(problem.pool.swapaxes(-1, -2))
    check_tokens_against_both_references(problem, (n, tokens), slot_indices=slots, num_threads=3)


def test_tokens_one_token_is_decode():
    rng = new_rng()
    problem = Problem(rng, 5, 2, 4, 32, 16, 6)
    slots = slots_for(rng, 5, 6, padding=1)
    out, pool = tokens_cpu(problem, slot_indices=slots)
    decode_out, decode_pool = cpu_backend(problem, slots)
    assert np.array_equal(out, decode_out) and np.array_equal(pool, decode_pool)
    with_t, _ = tokens_cpu(problem, (5, 1), slot_indices=slots)
    assert np.array_equal(with_t, decode_out)


def test_tokens_varlen_with_an_empty_sequence():
    """cu_seqlens with a zero-token sequence: it writes nothing (not even its slot); rows past
    cu_seqlens[N] are left alone; num_tokens may be any bound >= the longest sequence."""
    rng = new_rng()
    cu = np.array([0, 3, 3, 4, 8])
    rows = 8 + 2  # two rows belong to no sequence
    problem = Problem(rng, rows, 2, 4, 32, 16, 6)
    slots = np.array([4, 1, 0, -1])  # the last sequence is padding: zeros for its 4 tokens
    for bound in (4, 6, 16):
        errors = check_tokens_against_both_references(problem, slot_indices=slots, cu_seqlens=cu, num_tokens=bound)
    out, pool = tokens_cpu(problem, slot_indices=slots, cu_seqlens=cu, num_tokens=4)
    assert np.all(out[4:8] == 0), "padding sequence"
    assert np.all(np.isnan(out[8:])), "rows past cu_seqlens[N] were written"
    assert np.array_equal(pool[1], problem.pool[1]), "a sequence with no tokens changed its slot"
    assert not np.array_equal(pool[4], problem.pool[4]) and not np.array_equal(pool[0], problem.pool[0])
    # the [1, R, ...] form FLA uses, and int32 indices
    acts = [x[None] for x in token_acts(problem)]
    pool32 = problem.pool.copy()
    out32 = gdn.decode_tokens(*acts, problem.A_log, problem.dt_bias, pool32, slot_indices=slots.astype(np.int32),
                              cu_seqlens=cu.astype(np.int32), num_tokens=4, backend="cpu")
    assert out32.shape == (1, rows, 4, 16)
    assert np.array_equal(out32[0, :8], out[:8]) and np.array_equal(pool32, pool)
    print(f"    out {errors[0]:.1e} pool {errors[1]:.1e}")


def test_tokens_token_slots_snapshots():
    """With token_slots the state after token t goes to token_slots[n, t] (not where it is -1) and
    nowhere else: each snapshot equals the state after the first t+1 tokens, computed by calls
    without token_slots on the first t+1 tokens alone."""
    rng = new_rng()
    n, tokens, h, hv, k, v = 3, 4, 2, 4, 32, 32
    problem = Problem(rng, n * tokens, h, hv, k, v, 16)
    slots = np.array([0, 1, 2])
    table = np.array([[3, 4, -1, 5], [-1, -1, 6, 7], [8, 9, 10, -1]])
    check_tokens_against_both_references(problem, (n, tokens), slot_indices=slots, token_slots=table)
    out, pool = tokens_cpu(problem, (n, tokens), slot_indices=slots, token_slots=table)
    written = set(table[table >= 0].tolist())
    for slot in range(16):
        if slot not in written:
            assert np.array_equal(pool[slot], problem.pool[slot]), f"slot {slot} is no token's and changed"
    acts = token_acts(problem, (n, tokens))
    for t in range(tokens):
        prefix = [x[:, :t + 1].reshape((n * (t + 1),) + x.shape[2:]) for x in acts]
        _, prefix_pool = reference_decode_tokens(*prefix, problem.A_log, problem.dt_bias, problem.pool, slots,
                                                 num_tokens=t + 1)
        for seq in range(n):
            if table[seq, t] >= 0:
                assert_close(f"snapshot of sequence {seq} after token {t}", pool[table[seq, t]],
                             prefix_pool[slots[seq]], F32_TOL)


def test_tokens_num_accepted_rolls_back_over_two_calls():
    """Step 1 saves every token's state; step 2 starts each sequence from the state after its
    num_accepted-th token of step 1. Step 2's outputs and states must be those of one call over
    the accepted tokens of step 1 followed by the tokens of step 2."""
    rng = new_rng()
    n, tokens, h, hv, k, v = 4, 3, 2, 4, 32, 16
    step1 = Problem(rng, n * tokens, h, hv, k, v, 12)
    step2 = Problem(rng, n * tokens, h, hv, k, v, 12)
    step2.A_log, step2.dt_bias, step2.pool = step1.A_log, step1.dt_bias, None
    own = np.array([0, 1, 2, 3])
    table = np.column_stack([own, 4 + 2 * np.arange(n), 5 + 2 * np.arange(n)])  # column 0 = the sequence's slot
    accepted = np.array([1, 3, 2, 3])
    # cpu: two calls; reference backend: the same two calls in float64
    out1, pool = tokens_cpu(step1, (n, tokens), slot_indices=own, token_slots=table)
    ref_out1, ref_pool = tokens_reference_backend(step1, (n, tokens), slot_indices=own, token_slots=table)
    step2.pool = pool
    out2, pool2 = tokens_cpu(step2, (n, tokens), token_slots=table, num_accepted=accepted)
    step2.pool = ref_pool.astype(np.float32)  # (float32 only to satisfy Problem; the reference reads f64 below)
    acts64 = [x.astype(np.float64) for x in token_acts(step2, (n, tokens))]
    ref_pool2 = ref_pool.copy()
    ref_out2 = gdn.decode_tokens(*acts64, step1.A_log, step1.dt_bias, ref_pool2, token_slots=table,
                                 num_accepted=accepted, backend="reference")
    assert_close("step 1 out", out1, ref_out1, F32_TOL)
    assert_close("step 2 out", out2, ref_out2.reshape(out2.shape), F32_TOL)
    assert_close("pool after step 2", pool2, ref_pool2, F32_TOL)
    # NumPy: per sequence, the accepted tokens of step 1 then step 2's, from the original state
    rows1, rows2 = token_acts(step1), token_acts(step2)
    pick = [np.concatenate([np.arange(s * tokens, s * tokens + accepted[s]), n * tokens + np.arange(s * tokens,
                                                                                                   (s + 1) * tokens)])
            for s in range(n)]
    joined = [np.concatenate([x1, x2])[np.concatenate(pick)] for x1, x2 in zip(rows1, rows2)]
    cu = np.concatenate([[0], np.cumsum([len(p) for p in pick])])
    np_out, np_pool = reference_decode_tokens(*joined, step1.A_log, step1.dt_bias, step1.pool, own, cu_seqlens=cu)
    for s in range(n):
        tail = np_out[cu[s + 1] - tokens:cu[s + 1]]
        assert_close(f"sequence {s} (accepted {accepted[s]}) step 2 out", out2[s * tokens:(s + 1) * tokens], tail,
                     F32_TOL)
        assert_close(f"sequence {s} state after step 2", pool2[table[s, -1]], np_pool[own[s]], F32_TOL)


def test_tokens_padding_rows():
    """A padding row (slot -1, slot 0 with null_slot_zero, or a -1 picked by num_accepted) has
    zero outputs for all its tokens and touches no state; token slots 0 are not saved either."""
    rng = new_rng()
    n, tokens = 4, 3
    problem = Problem(rng, n * tokens, 2, 4, 16, 16, 10)
    slots = np.array([2, -1, 0, 5])
    table = np.array([[2, 6, 7], [-1, 8, 9], [0, 1, 3], [5, 0, 4]])
    for null_slot_zero in (False, True):
        check_tokens_against_both_references(problem, (n, tokens), slot_indices=slots, token_slots=table,
                                             null_slot_zero=null_slot_zero)
    out, pool = tokens_cpu(problem, (n, tokens), slot_indices=slots, token_slots=table, null_slot_zero=True)
    out = out.reshape(n, tokens, 4, 16)
    assert np.all(out[1] == 0) and np.all(out[2] == 0) and not np.any(out[3] == 0)
    for slot in (0, 1, 3, 8, 9):  # slot 0 is null, 1 and 3 belong to a padding row, 8 and 9 too
        assert np.array_equal(pool[slot], problem.pool[slot]), f"slot {slot} changed"
    # num_accepted picking a -1 (or, with null_slot_zero, a 0) makes the row padding
    accepted = np.array([2, 1, 1, 3])
    check_tokens_against_both_references(problem, (n, tokens), token_slots=table, num_accepted=accepted,
                                         null_slot_zero=True)
    out, _ = tokens_cpu(problem, (n, tokens), token_slots=table, num_accepted=accepted, null_slot_zero=True)
    out = out.reshape(n, tokens, 4, 16)
    assert np.all(out[1] == 0) and np.all(out[2] == 0) and not np.any(out[0] == 0)


def test_tokens_strided_inputs_and_token_slot_rows():
    """Token rows sliced out of one packed projection; token_slots the first columns of a wider
    table (the library reads whole rows of token_slots_stride entries)."""
    rng = new_rng()
    n, tokens, h, hv, k, v = 3, 2, 2, 4, 16, 16
    problem = Problem(rng, n * tokens, h, hv, k, v, 12)
    rows = n * tokens
    qkv = np.concatenate([problem.q.reshape(rows, -1), problem.k.reshape(rows, -1), problem.v.reshape(rows, -1),
                          np.zeros((rows, 8), np.float32)], axis=1).reshape(n, tokens, -1)
    q = qkv[:, :, :h * k].reshape(n, tokens, h, k)
    kk = qkv[:, :, h * k:2 * h * k].reshape(n, tokens, h, k)
    vv = qkv[:, :, 2 * h * k:2 * h * k + hv * v].reshape(n, tokens, hv, v)
    assert not q.flags.c_contiguous and np.shares_memory(q, qkv)
    wide = np.full((n, tokens + 2), -1, dtype=np.int64)
    wide[:, :tokens] = [[3, 4], [5, 6], [7, 8]]
    slots = np.array([0, 1, 2])
    pool = problem.pool.copy()
    out = gdn.decode_tokens(q, kk, vv, *token_acts(problem, (n, tokens))[3:], problem.A_log, problem.dt_bias, pool,
                            slot_indices=slots, token_slots=wide[:, :tokens], backend="cpu")
    dense_out, dense_pool = tokens_cpu(problem, (n, tokens), slot_indices=slots, token_slots=wide[:, :tokens].copy())
    assert np.array_equal(out.reshape(dense_out.shape), dense_out) and np.array_equal(pool, dense_pool)
    # the last columns of the wide table: the library's reads of whole rows would pass its end
    expect_error(ValueError, lambda: gdn.decode_tokens(q, kk, vv, *token_acts(problem, (n, tokens))[3:],
                                                       problem.A_log, problem.dt_bias, problem.pool.copy(),
                                                       slot_indices=slots, token_slots=wide[:, 2:], backend="cpu"),
                 "token_slots", "past")
    # [N, T] rows that are not evenly spaced cannot be one stride apart
    padded = np.zeros((n, tokens + 1, h, k), np.float32)
    padded[:, :tokens] = q
    expect_error(ValueError, lambda: gdn.decode_tokens(padded[:, :tokens], kk, vv,
                                                       *token_acts(problem, (n, tokens))[3:], problem.A_log,
                                                       problem.dt_bias, problem.pool.copy(), slot_indices=slots),
                 "q", "evenly spaced")


def test_tokens_errors():
    rng = new_rng()
    n, tokens = 2, 3
    p = Problem(rng, n * tokens, 2, 4, 16, 16, 8)
    q, k, v, a, b = token_acts(p, (n, tokens))
    slots = np.array([0, 1])
    pool = p.pool.copy()
    out = np.full(v.shape, np.nan, np.float32)

    def call(**changes):
        args = dict(q=q, k=k, v=v, a=a, b=b, A_log=p.A_log, dt_bias=p.dt_bias, state_pool=pool, slot_indices=slots,
                    out=out, backend="cpu")
        args.update(changes)
        return lambda: gdn.decode_tokens(**args)

    # refused by the library, with its message
    table = np.array([[2, 3, 4], [5, 6, 7]])
    error = expect_error(gdn.GdnArgumentError, call(token_slots=table, write_slot_indices=np.array([2, 5])),
                         "token_slots and write_slot_indices are both set")
    assert error.status == gdn.Status.ERR_INVALID_ARGUMENT
    expect_error(gdn.GdnArgumentError, call(token_slots=np.array([[2, 3, 4], [5, 6, 8]])),
                 "token_slots[5] = 8 but num_slots = 8")
    expect_error(gdn.GdnArgumentError, call(token_slots=table, num_accepted=np.array([1, 4])),
                 "num_accepted[1] = 4 is outside 1..3")
    expect_error(gdn.GdnArgumentError, call(num_accepted=np.array([1, 1])), "num_accepted needs token_slots")
    rows = [x.reshape((n * tokens,) + x.shape[2:]) for x in (q, k, v, a, b)]
    flat = dict(zip("qkvab", rows), out=out.reshape(n * tokens, 4, 16))
    expect_error(gdn.GdnArgumentError, call(**flat, cu_seqlens=np.array([0, 4, 6]), num_tokens=3),
                 "cu_seqlens[0] = 0, cu_seqlens[1] = 4")
    expect_error(gdn.GdnArgumentError, call(**flat, cu_seqlens=np.array([0, 4, 2]), num_tokens=4), "cu_seqlens")
    many = Problem(rng, 17, 2, 4, 16, 16, 8)
    expect_error(gdn.GdnArgumentError, lambda: gdn.decode_tokens(*token_acts(many, (1, 17)), many.A_log,
                                                                 many.dt_bias, pool, slot_indices=slots[:1]),
                 "num_tokens = 17 is outside")
    # refused in Python
    expect_error(ValueError, call(v=v[:, :2]), "v", "shape")
    expect_error(ValueError, call(a=rows[3][:5]), "a", "shape")
    expect_error(ValueError, call(slot_indices=np.array([0, 1, 2])), "slot_indices", "shape")
    expect_error(ValueError, call(token_slots=table[:, :2]), "token_slots", "num_tokens = 3")
    expect_error(ValueError, call(num_tokens=2), "num_tokens = 2", "3 tokens")
    expect_error(ValueError, call(**flat, num_tokens=4), "num_tokens = 4")
    expect_error(ValueError, call(**flat, cu_seqlens=np.array([0, 3, 6])), "num_tokens is required")
    expect_error(ValueError, call(**flat, cu_seqlens=np.array([0, 3, 7]), num_tokens=4), "cu_seqlens[2] = 7")
    expect_error(ValueError, call(**flat, cu_seqlens=np.array([[0, 3, 6]]), num_tokens=3), "cu_seqlens", "[N + 1]")
    expect_error(ValueError, call(k=k.reshape(3, 2, 2, 16)), "k has shape (3, 2, 2, 16)", "[N, T, H, K] = [2, 3, H, K]")
    expect_error(ValueError, call(slot_indices=None), "slot_indices is required")
    expect_error(ValueError, call(num_tokens=0), "num_tokens = 0")
    expect_error(TypeError, call(num_tokens=2.0), "num_tokens")
    expect_error(TypeError, call(token_slots=table.astype(np.int32)), "token_slots", "int32", "int64")
    expect_error(TypeError, call(q=q.astype(np.float16)), "float16")
    assert np.array_equal(pool, p.pool), "a refused call changed the state pool"
    assert np.all(np.isnan(out)), "a refused call wrote the output"


def test_tokens_zero_rows():
    rng = new_rng()
    p = Problem(rng, 0, 2, 4, 16, 16, 3)
    pool = p.pool.copy()
    out = gdn.decode_tokens(*token_acts(p, (2, 0)), p.A_log, p.dt_bias, pool, slot_indices=np.array([0, 1]))
    assert out.shape == (2, 0, 4, 16) and np.array_equal(pool, p.pool)
    out = gdn.decode_tokens(*token_acts(p), p.A_log, p.dt_bias, pool, slot_indices=np.array([0, 1]),
                            cu_seqlens=np.array([0, 0, 0]), num_tokens=2)
    assert out.shape == (0, 4, 16) and np.array_equal(pool, p.pool)


def test_tokens_refused_by_a_library_without_multi_token_fields():
    from gdn import _lib

    rng = new_rng()
    p = Problem(rng, 2, 1, 2, 16, 16, 2)
    saved = _lib.LIB.params_size
    _lib.LIB.params_size = _lib.MULTI_TOKEN_FIELDS_END - 8
    try:
        expect_error(RuntimeError, lambda: gdn.decode_tokens(*token_acts(p), p.A_log, p.dt_bias, p.pool.copy(),
                                                             slot_indices=np.array([0, 1])), "multi-token")
    finally:
        _lib.LIB.params_size = saved


def test_tokens_reference_vectors_as_one_call():
    """The shared vectors with T <= 16 as one multi-token call; their token_states through
    token_slots (snapshots in extra slots of the pool)."""
    directory = vectors_dir()
    if directory is None:
        skip("REFERENCE VECTORS NOT FOUND (see test_reference_vectors)")
    ran = 0
    for path in sorted(directory.glob("*.gdnv")):
        arrays = read_gdnv(path)
        q = arrays["q"]
        n, tokens = q.shape[:2]
        if tokens > gdn.MAX_TOKENS:
            continue
        slots = arrays["slot_indices"]
        l2norm, tiled = (bool(x) for x in arrays["flags"])
        pool_in = arrays["pool_in"]
        options = dict(scale=float(arrays["scale"][0]), qk_l2norm=l2norm, head_map="tiled" if tiled else "grouped",
                       backend="cpu")
        acts = [arrays[name] for name in ("q", "k", "v", "a", "b")]
        pool = pool_in.copy()
        out = gdn.decode_tokens(*acts, arrays["A_log"], arrays["dt_bias"], pool, slot_indices=slots, **options)
        errors = [rel_err(out, arrays["out"]), rel_err(pool, arrays["pool_out"])]
        if "token_states" in arrays:
            live = np.flatnonzero(slots >= 0)
            extra = len(pool_in) + np.arange(n * tokens).reshape(n, tokens)
            table = np.where((slots >= 0)[:, None], extra, -1)
            snap_pool = np.concatenate([pool_in, np.zeros((n * tokens,) + pool_in.shape[1:], np.float32)])
            gdn.decode_tokens(*acts, arrays["A_log"], arrays["dt_bias"], snap_pool, slot_indices=slots,
                              token_slots=table, **options)
            errors.append(rel_err(snap_pool[table[live]], arrays["token_states"][live]))
        print(f"    {path.stem:26s} T={tokens:2d} out {errors[0]:.2e} pool {errors[1]:.2e}"
              + (f" token states {errors[2]:.2e}" if len(errors) > 2 else ""))
        assert max(errors) <= F32_TOL, f"{path.name}: errors {errors} above {F32_TOL}"
        ran += 1
    assert ran, "no vector file with T <= 16"


# ----------------------------------------------------------------------------------------------
# torch (skipped without it): bf16, the same results as NumPy, the drop-in wrappers, a custom op
# ----------------------------------------------------------------------------------------------

def torch_problem(torch, problem, act_dtype, state_dtype):
    """The problem's arrays as CPU torch tensors of the given dtypes (the pool a copy)."""
    acts = [torch.from_numpy(x).to(act_dtype) for x in (problem.q, problem.k, problem.v, problem.a, problem.b)]
    params = [torch.from_numpy(problem.A_log), torch.from_numpy(problem.dt_bias)]
    return acts, params, torch.from_numpy(problem.pool).to(state_dtype, copy=True)


def test_torch_float32_matches_numpy():
    torch = require_torch()
    rng = new_rng()
    problem = Problem(rng, 5, 2, 4, 32, 32, 6)
    slots = slots_for(rng, 5, 6, padding=2)
    acts, params, pool = torch_problem(torch, problem, torch.float32, torch.float32)
    out = gdn.decode(*acts, *params, pool, torch.from_numpy(slots), backend="cpu")
    np_out, np_pool = cpu_backend(problem, slots)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert np.array_equal(out.numpy(), np_out) and np.array_equal(pool.numpy(), np_pool)


def test_torch_bfloat16_activations_and_state():
    torch = require_torch()
    rng = new_rng()
    for state_dtype in (torch.float32, torch.bfloat16):
        problem = Problem(rng, 6, 2, 4, 64, 64, 7)
        slots = slots_for(rng, 6, 7, padding=1)
        acts, params, pool = torch_problem(torch, problem, torch.bfloat16, state_dtype)
        inputs64 = [x.double().numpy() for x in acts]
        pool64 = pool.double().numpy()  # the state as stored, rounded to its dtype
        out = gdn.decode(*acts, *params, pool, torch.from_numpy(slots).to(torch.int32), backend="cpu")
        assert out.dtype == torch.bfloat16
        ref_out, ref_pool = reference_decode(*inputs64, problem.A_log, problem.dt_bias, pool64, slots)
        assert_close("bf16 out", out.double().numpy(), ref_out, BF16_OUT_TOL)
        if state_dtype == torch.float32:
            assert_close("f32 state", pool.numpy(), ref_pool, F32_TOL)
        else:
            # bf16 state: within 2x of the error of the reference state itself rounded to bf16
            drift = rel_err(bf16_round(ref_pool), ref_pool)
            assert_close("bf16 state", pool.double().numpy(), ref_pool, 2 * drift + 1e-6)


def test_torch_errors():
    torch = require_torch()
    rng = new_rng()
    problem = Problem(rng, 2, 1, 2, 16, 16, 2)
    acts, params, pool = torch_problem(torch, problem, torch.bfloat16, torch.float32)
    slots = torch.tensor([0, 1])
    expect_error(TypeError, lambda: gdn.decode(*acts, *params, pool.to(torch.float16), slots), "state_pool", "float16")
    half = [x.to(torch.float16) for x in acts]
    expect_error(TypeError, lambda: gdn.decode(half[0], *acts[1:], *params, pool, slots), "bfloat16", "float16")
    expect_error(TypeError, lambda: gdn.decode(*acts, params[0].double(), params[1], pool, slots), "A_log")
    sparse = acts[0].to_sparse()
    expect_error(TypeError, lambda: gdn.decode(sparse, *acts[1:], *params, pool, slots), "q")


def compat_problem(torch, rng, num_seqs=4, h=2, hv=4, k=32, v=32, num_slots=6, act_dtype=None):
    problem = Problem(rng, num_seqs, h, hv, k, v, num_slots)
    acts, params, pool = torch_problem(torch, problem, act_dtype or torch.float32, torch.float32)
    return problem, acts, params, pool


def test_compat_fla_fused_recurrent():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    problem, (q, k, v, a, b), (A_log, dt_bias), pool_vk = compat_problem(torch, rng)
    n = q.shape[0]
    state_kv = pool_vk[:n].transpose(-1, -2).contiguous()  # FLA's default [N, HV, K, V]
    before = state_kv.clone()
    gate = dict(use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True,
                use_qk_l2norm_in_kernel=True)
    o, final = compat.fused_recurrent_gated_delta_rule(q[:, None], k[:, None], v[:, None], g=a[:, None],
                                                      beta=b[:, None], initial_state=state_kv,
                                                      output_final_state=True, **gate)
    expected_pool = state_kv.clone()
    expected = gdn.decode(q, k, v, a, b, A_log, dt_bias, expected_pool, torch.arange(n), layout="kv")
    assert o.shape == (n, 1, 4, 32) and torch.equal(o[:, 0], expected)
    assert final.dtype == torch.float32 and torch.equal(final, expected_pool)
    assert torch.equal(state_kv, before), "FLA's initial_state is an input"
    o2, none = compat.fused_recurrent_gated_delta_rule(q[:, None], k[:, None], v[:, None], g=a[:, None],
                                                       beta=b[:, None], initial_state=state_kv, **gate)
    assert none is None and torch.equal(o2, o) and torch.equal(state_kv, before)
    # state_v_first (and its older name) selects [N, HV, V, K]
    for flag in ("state_v_first", "transpose_state_layout"):
        o3, final3 = compat.fused_recurrent_gated_delta_rule(q[:, None], k[:, None], v[:, None], g=a[:, None],
                                                             beta=b[:, None], initial_state=pool_vk[:n],
                                                             output_final_state=True, **{flag: True}, **gate)
        assert torch.allclose(o3, o, rtol=1e-5, atol=1e-6) and torch.allclose(final3.transpose(-1, -2), final,
                                                                               rtol=1e-5, atol=1e-6)
    # varlen: [1, N, ...] with cu_seqlens = arange(N + 1), gdn's own names a= and b=
    cu = torch.arange(n + 1)
    o4, final4 = compat.fused_recurrent_gated_delta_rule(q[None], k[None], v[None], a=a[None], b=b[None],
                                                         initial_state=state_kv, output_final_state=True,
                                                         cu_seqlens=cu, A_log=A_log, dt_bias=dt_bias,
                                                         use_qk_l2norm_in_kernel=True)
    assert o4.shape == (1, n, 4, 32) and torch.equal(o4[0], o[:, 0]) and torch.equal(final4, final)


def test_compat_vllm_pool_in_place():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    problem, (q, k, v, a, b), (A_log, dt_bias), pool = compat_problem(torch, rng)
    indices = torch.tensor([5, -1, 0, 3], dtype=torch.int32)
    gate = dict(use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                use_qk_l2norm_in_kernel=True)
    expected_pool = pool.clone()  # vLLM's pool layout is [slots, HV, V, K]
    expected = gdn.decode(q, k, v, a, b, A_log, dt_bias, expected_pool, indices)
    pool_vllm = pool.clone()
    o, state = compat.fused_recurrent_gated_delta_rule(q[None], k[None], v[None], a[None], b[None],
                                                       initial_state=pool_vllm, inplace_final_state=True,
                                                       cu_seqlens=torch.arange(5), ssm_state_indices=indices, **gate)
    assert state is pool_vllm and torch.equal(pool_vllm, expected_pool) and torch.equal(o[0], expected)
    assert torch.all(o[0, 1] == 0), "padding row"
    # a [N, T] index table: its first column is the slot
    table = torch.stack([indices, indices + 10], dim=1)
    pool_again = pool.clone()
    compat.fused_recurrent_gated_delta_rule(q[:, None], k[:, None], v[:, None], a[:, None], b[:, None],
                                            initial_state=pool_again, ssm_state_indices=table, **gate)
    assert torch.equal(pool_again, expected_pool)
    # an older vLLM's [slots, HV, K, V] pool, and NULL_BLOCK_ID = 0
    pool_kv = pool.transpose(-1, -2).contiguous()
    expected_kv = pool_kv.clone()
    expected_null = gdn.decode(q, k, v, a, b, A_log, dt_bias, expected_kv, indices, layout="kv", null_slot_zero=True)
    o_kv, _ = compat.fused_recurrent_gated_delta_rule(q[:, None], k[:, None], v[:, None], a[:, None], b[:, None],
                                                      initial_state=pool_kv, ssm_state_indices=indices,
                                                      state_v_first=False, null_slot_zero=True, **gate)
    assert torch.equal(pool_kv, expected_kv) and torch.equal(o_kv[:, 0], expected_null)
    assert torch.all(o_kv[2] == 0), "slot 0 is the null block"


def test_compat_fla_refuses_what_gdn_cannot_do():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    _, (q, k, v, a, b), (A_log, dt_bias), pool = compat_problem(torch, rng)
    q1, k1, v1, a1, b1 = q[:, None], k[:, None], v[:, None], a[:, None], b[:, None]
    fla = compat.fused_recurrent_gated_delta_rule
    gate = dict(use_gate_in_kernel=True, A_log=A_log, use_beta_sigmoid_in_kernel=True)
    # gdn 0.5 serves precomputed g and beta, and any length without a pool (tests/python/
    # test_forward_cpu.py); the vLLM pool paths still take 1..16 tokens per sequence.
    many = [torch.cat([x] * 17, dim=1) for x in (q1, k1, v1, a1, b1)]
    expect_error(NotImplementedError, lambda: fla(*many[:3], g=many[3], beta=many[4], initial_state=pool.clone(),
                                                  inplace_final_state=True, **gate), "17 tokens", "16")
    flat = [x.flatten(0, 1)[None] for x in many]
    expect_error(NotImplementedError, lambda: fla(*flat[:3], g=flat[3], beta=flat[4], initial_state=pool.clone(),
                                                  inplace_final_state=True,
                                                  cu_seqlens=torch.tensor([0, 17, 34, 51, 68]), **gate), "17 tokens")
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, g=a1, beta=b1, num_accepted_tokens=torch.ones(4),
                                                  **gate), "num_accepted_tokens", "2-D")
    two = [torch.cat([x, x], dim=1) for x in (q1, k1, v1, a1, b1)]
    slots = torch.tensor([0, 1, 2, 3])
    for kwargs, fragments in ((dict(ssm_state_indices=slots), ("1-D ssm_state_indices", "[N, T]")),
                              (dict(ssm_state_indices=slots, num_accepted_tokens=slots), ("2-D",)),
                              (dict(ssm_state_indices=slots[:, None].repeat(1, 2), inplace_final_state=False),
                               ("inplace_final_state=False",)),
                              (dict(ssm_state_indices=slots[:, None].repeat(1, 2), retrieve_parent_token=slots),
                               ("retrieve_parent_token",))):
        expect_error(NotImplementedError, lambda: fla(*two[:3], g=two[3], beta=two[4], initial_state=pool.clone(),
                                                      **kwargs, **gate), *fragments)
    expect_error(ValueError, lambda: fla(q1, k1, v1, g=a1, beta=b1.sigmoid(), allow_neg_eigval=True, A_log=A_log,
                                         use_gate_in_kernel=True), "allow_neg_eigval", "use_beta_sigmoid_in_kernel")
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, g=a1, beta=torch.ones(4, 1, 4, 32), A_log=A_log,
                                                  use_gate_in_kernel=True), "per-channel beta")
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, gk=a1, beta=b1, **gate), "gk")
    expect_error(TypeError, lambda: fla(q.numpy(), k1, v1, g=a1, beta=b1, **gate), "torch")


def test_compat_vllm_packed_decode():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    problem, (q, k, v, a, b), (A_log, dt_bias), pool = compat_problem(torch, rng, act_dtype=torch.bfloat16)
    n = q.shape[0]
    # rows of a wider buffer: the packed projection's rows are strided
    mixed = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1), torch.zeros(n, 8, dtype=q.dtype)], dim=1)[:, :-8]
    dt_bias_bf16 = dt_bias.bfloat16()  # engines keep it in bf16; the wrapper converts it
    indices = torch.tensor([1, -1, 4, 2])
    expected_pool = pool.clone()
    expected = gdn.decode(q, k, v, a, b, A_log, dt_bias_bf16.float(), expected_pool, indices, qk_l2norm=True)
    out = torch.empty(n, 1, 4, 32, dtype=torch.bfloat16)
    result = compat.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias_bf16, 0.0, pool, out,
                                                                   indices, use_qk_l2norm_in_kernel=True)
    assert result[0] is out and result[1] is pool
    assert torch.equal(out[:, 0], expected) and torch.equal(pool, expected_pool)
    # vLLM's paged view of its hybrid page: [slots, HV+1, V, K] storage, GDN state in the first HV
    storage = torch.randn(pool.shape[0], pool.shape[1] + 1, *pool.shape[2:])
    paged = storage[:, :pool.shape[1]]
    paged.copy_(pool)
    conv = storage[:, -1].clone()
    again = expected_pool.clone()
    expected = gdn.decode(q, k, v, a, b, A_log, dt_bias_bf16.float(), again, indices, qk_l2norm=True)
    compat.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias_bf16, 0.0, paged, out, indices,
                                                          use_qk_l2norm_in_kernel=True)
    assert torch.equal(out[:, 0], expected) and torch.equal(paged, again) and torch.equal(storage[:, -1], conv)


def test_compat_sglang_fused_sigmoid_gating():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    problem, (q, k, v, a, b), (A_log, dt_bias), pool = compat_problem(torch, rng)
    indices = torch.tensor([3, 0, -1, 5])
    expected_pool = pool.clone()
    expected = gdn.decode(q, k, v, a, b, A_log, dt_bias, expected_pool, indices, scale=0.1, qk_l2norm=True)
    n = q.shape[0]
    o = compat.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q[None], k[None], v[None], b,
                                                      pool, indices, scale=0.1, use_qk_l2norm_in_kernel=True,
                                                      cu_seqlens=torch.arange(n + 1))
    assert o.shape == (1, n, 4, 32) and torch.equal(o[0], expected) and torch.equal(pool, expected_pool)
    expect_error(NotImplementedError, lambda: compat.fused_sigmoid_gating_delta_rule_update(
        A_log, a, dt_bias, 2.0, 20.0, q[None], k[None], v[None], b, pool, indices), "softplus_beta")


def test_compat_flashinfer_pretranspose():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    problem, (q, k, v, a, b), (A_log, dt_bias), pool = compat_problem(torch, rng, act_dtype=torch.bfloat16)
    n = q.shape[0]
    q1, k1, v1, a1, b1 = q[:, None], k[:, None], v[:, None], a[:, None], b[:, None]
    # pool mode, separate write slots, bf16 dt_bias, an fp32 output buffer (cast like FlashInfer)
    read, write = torch.tensor([0, 1, -1, 2]), torch.tensor([3, 4, -1, 5], dtype=torch.int32)
    expected_pool = pool.clone()
    expected = gdn.decode(q, k, v, a, b, A_log, dt_bias.bfloat16().float(), expected_pool, read,
                          write_slot_indices=write.long())
    output = torch.full((n, 1, 4, 32), float("nan"))
    o, state = compat.gated_delta_rule_decode_pretranspose(q1, k1, v1, None, A_log, a1, dt_bias.bfloat16(), b1,
                                                          output=output, initial_state=pool,
                                                          initial_state_indices=read, output_state_indices=write)
    assert o is output and state is pool and torch.equal(pool, expected_pool)
    assert torch.equal(o[:, 0], expected.float()) and torch.all(o[2] == 0)
    # per-batch state [B, HV, V, K], non-contiguous (updated through a copy)
    batch_state = pool[:n].transpose(0, 1).contiguous().transpose(0, 1)
    assert not batch_state.is_contiguous()
    direct_expected = batch_state.contiguous().clone()
    expected2 = gdn.decode(q, k, v, a, b, A_log, dt_bias, direct_expected, torch.arange(n))
    o2, state2 = compat.gated_delta_rule_decode_pretranspose(q1, k1, v1, batch_state, A_log, a1, dt_bias, b1)
    assert state2 is batch_state and torch.equal(batch_state, direct_expected) and torch.equal(o2[:, 0], expected2)
    assert o2.dtype == torch.bfloat16 and o2.shape == (n, 1, 4, 32)
    expect_error(ValueError, lambda: compat.gated_delta_rule_decode_pretranspose(
        q1, k1, v1, pool[:n].clone(), A_log, a1, dt_bias, b1, disable_state_update=True), "T > 1 only")


def test_torch_custom_op_and_compile():
    torch = require_torch()
    if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):
        skip(f"torch {torch.__version__} has no torch.library.custom_op")
    import gdn.torch_ops  # noqa: F401  registers torch.ops.gdn.decode_

    rng = new_rng()
    problem, (q, k, v, a, b), (A_log, dt_bias), pool = compat_problem(torch, rng, act_dtype=torch.bfloat16)
    slots = torch.tensor([2, -1, 0, 5])
    expected_pool = pool.clone()
    expected = gdn.decode(q, k, v, a, b, A_log, dt_bias, expected_pool, slots)

    def step(q, k, v, a, b, pool, slots):
        out = torch.empty_like(v)
        torch.ops.gdn.decode_(q, k, v, a, b, A_log, dt_bias, pool, slots, out)
        return out * 1.0  # something after the op, so that the graph is not just the op

    def plain_step(q, k, v, a, b, pool, slots):
        return gdn.decode(q, k, v, a, b, A_log, dt_bias, pool, slots) * 1.0  # becomes the operator when traced

    for function in (step, plain_step):
        eager_pool, compiled_pool = pool.clone(), pool.clone()
        assert torch.equal(function(q, k, v, a, b, eager_pool, slots), expected)
        assert torch.equal(eager_pool, expected_pool)
        compiled = torch.compile(function, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(q, k, v, a, b, compiled_pool, slots), expected)
        assert torch.equal(compiled_pool, expected_pool)


# ----------------------------------------------------------------------------------------------
# torch: multi-token decode, and the wrappers' multi-token paths
# ----------------------------------------------------------------------------------------------

def test_torch_decode_tokens_bfloat16_and_varlen():
    torch = require_torch()
    rng = new_rng()
    n, tokens, h, hv, k, v = 3, 4, 2, 4, 64, 64
    for state_dtype in (torch.float32, torch.bfloat16):
        problem = Problem(rng, n * tokens, h, hv, k, v, 12)
        acts, params, pool = torch_problem(torch, problem, torch.bfloat16, state_dtype)
        inputs64 = [x.double().numpy() for x in acts]
        pool64 = pool.double().numpy()
        slots = torch.tensor([0, -1, 2], dtype=torch.int32)
        table = torch.tensor([[3, 4, -1, 5], [6, 7, 8, 9], [-1, 10, 11, 2]], dtype=torch.int32)
        four_d = [x.unflatten(0, (n, tokens)) for x in acts]
        out = gdn.decode_tokens(*four_d, *params, pool, slot_indices=slots, token_slots=table, backend="cpu")
        assert out.dtype == torch.bfloat16 and out.shape == (n, tokens, hv, v)
        ref_out, ref_pool = reference_decode_tokens(*inputs64, problem.A_log, problem.dt_bias, pool64, slots.numpy(),
                                                    num_tokens=tokens, token_slots=table.numpy())
        assert_close("bf16 out", out.flatten(0, 1).double().numpy(), ref_out, BF16_OUT_TOL)
        if state_dtype == torch.float32:
            assert_close("f32 snapshots", pool.numpy(), ref_pool, F32_TOL)
        else:  # each snapshot is the float32 running state rounded once to bf16
            drift = rel_err(bf16_round(ref_pool), ref_pool)
            assert_close("bf16 snapshots", pool.double().numpy(), ref_pool, 2 * drift + 1e-6)
    # varlen on torch: int64 cu_seqlens, a zero-token sequence; the same numbers as NumPy
    problem = Problem(rng, 7, h, hv, k, v, 6)
    acts, params, pool = torch_problem(torch, problem, torch.float32, torch.float32)
    cu, slots = np.array([0, 2, 2, 7]), np.array([5, 0, 3])
    out = gdn.decode_tokens(*acts, *params, pool, slot_indices=torch.from_numpy(slots),
                            cu_seqlens=torch.from_numpy(cu), num_tokens=5, backend="cpu")
    np_out, np_pool = tokens_cpu(problem, slot_indices=slots, cu_seqlens=cu, num_tokens=5)
    assert np.array_equal(out.numpy(), np_out) and np.array_equal(pool.numpy(), np_pool)


def test_compat_fla_multi_token():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    n, tokens = 3, 3
    problem, acts, (A_log, dt_bias), pool_vk = compat_problem(torch, rng, num_seqs=n * tokens, num_slots=n)
    q, k, v, a, b = (x.unflatten(0, (n, tokens)) for x in acts)
    state_kv = pool_vk.transpose(-1, -2).contiguous()
    before = state_kv.clone()
    gate = dict(use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True,
                use_qk_l2norm_in_kernel=True)
    o, final = compat.fused_recurrent_gated_delta_rule(q, k, v, g=a, beta=b, initial_state=state_kv,
                                                      output_final_state=True, **gate)
    expected_pool = state_kv.clone()
    expected = gdn.decode_tokens(q, k, v, a, b, A_log, dt_bias, expected_pool, slot_indices=torch.arange(n),
                                 layout="kv")
    assert o.shape == (n, tokens, 4, 32) and torch.equal(o, expected) and torch.equal(final, expected_pool)
    assert torch.equal(state_kv, before), "FLA's initial_state is an input"
    np_out, np_pool = reference_decode_tokens(*(x.numpy() for x in acts), problem.A_log, problem.dt_bias,
                                              before.numpy(), np.arange(n), num_tokens=tokens, layout="kv")
    assert_close("FLA T=3 out", o.flatten(0, 1).numpy(), np_out, F32_TOL)
    assert_close("FLA T=3 final state", final.numpy(), np_pool, F32_TOL)
    o2, none = compat.fused_recurrent_gated_delta_rule(q, k, v, g=a, beta=b, initial_state=state_kv, **gate)
    assert none is None and torch.equal(o2, o) and torch.equal(state_kv, before)
    # varlen [1, R, ...], a sequence without tokens keeps its initial state
    cu = torch.tensor([0, 4, 4, 9])
    o3, final3 = compat.fused_recurrent_gated_delta_rule(*(x[None] for x in acts[:3]), g=acts[3][None],
                                                         beta=acts[4][None], initial_state=state_kv,
                                                         output_final_state=True, cu_seqlens=cu, **gate)
    np_out, np_pool = reference_decode_tokens(*(x.numpy() for x in acts), problem.A_log, problem.dt_bias,
                                              before.numpy(), np.arange(n), cu_seqlens=cu.numpy(), layout="kv")
    assert o3.shape == (1, 9, 4, 32)
    assert_close("FLA varlen out", o3[0].numpy(), np_out, F32_TOL)
    assert_close("FLA varlen final state", final3.numpy(), np_pool, F32_TOL)
    assert torch.equal(final3[1], before[1])


def test_compat_vllm_speculative_decoding():
    """vLLM's spec decode: varlen [1, N*T] batches, a 2-D ssm_state_indices [N, T] table (one slot
    per token) and num_accepted_tokens on the next step, all int32; the pool updated in place."""
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    n, tokens, num_slots = 3, 3, 12
    gate = None
    steps = []
    for _ in range(2):
        problem, acts, (A_log, dt_bias), pool = compat_problem(torch, rng, num_seqs=n * tokens, num_slots=num_slots)
        steps.append(acts)
        gate = gate or dict(use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                            use_qk_l2norm_in_kernel=True)
    start = pool.clone()
    table = torch.tensor([[0, 3, 4], [1, 5, 6], [2, 7, 8]], dtype=torch.int32)
    cu = torch.arange(0, n * tokens + 1, tokens, dtype=torch.int32)
    accepted = torch.tensor([2, 1, 3], dtype=torch.int32)
    vllm_pool, gdn_pool = start.clone(), start.clone()
    for step, acts in enumerate(steps):
        q, k, v, a, b = (x[None] for x in acts)
        num_accepted = accepted if step else None
        o, state = compat.fused_recurrent_gated_delta_rule(q, k, v, a, b, initial_state=vllm_pool,
                                                           inplace_final_state=True, cu_seqlens=cu,
                                                           ssm_state_indices=table, num_accepted_tokens=num_accepted,
                                                           **gate)
        expected = gdn.decode_tokens(*acts, gate["A_log"], gate["dt_bias"], gdn_pool, token_slots=table,
                                     slot_indices=None if step else table[:, 0].contiguous(),
                                     num_accepted=num_accepted, cu_seqlens=cu, num_tokens=tokens)
        assert state is vllm_pool and o.shape == (1, n * tokens, 4, 32)
        assert torch.equal(o[0], expected) and torch.equal(vllm_pool, gdn_pool)
    # step 2 against NumPy: the accepted tokens of step 1, then step 2's, from the start state
    rows = [torch.cat([x1, x2]).numpy() for x1, x2 in zip(*steps)]
    pick = np.concatenate([np.concatenate([np.arange(s * tokens, s * tokens + int(accepted[s])),
                                           n * tokens + np.arange(s * tokens, (s + 1) * tokens)]) for s in range(n)])
    cu_joined = np.cumsum([0] + [int(accepted[s]) + tokens for s in range(n)])
    np_out, np_pool = reference_decode_tokens(*(x[pick] for x in rows), gate["A_log"].numpy(),
                                              gate["dt_bias"].numpy(), start.numpy(), np.arange(n),
                                              cu_seqlens=cu_joined)
    for s in range(n):
        assert_close(f"sequence {s} step 2", o[0, s * tokens:(s + 1) * tokens].numpy(),
                     np_out[cu_joined[s + 1] - tokens:cu_joined[s + 1]], F32_TOL)
        assert_close(f"sequence {s} state", vllm_pool[table[s, -1]].numpy(), np_pool[s], F32_TOL)
    # one token per sequence with num_accepted: read column accepted-1, write column 0
    one = [x[:n] for x in steps[0]]
    pool1, pool2 = start.clone(), start.clone()
    o1, _ = compat.fused_recurrent_gated_delta_rule(*(x[:, None] for x in one), initial_state=pool1,
                                                    ssm_state_indices=table, num_accepted_tokens=accepted, **gate)
    reads = table[torch.arange(n), accepted.long() - 1]
    expected = gdn.decode(*one, gate["A_log"], gate["dt_bias"], pool2, reads,
                          write_slot_indices=table[:, 0].contiguous())
    # the two calls run different cpu kernels (token slots take the multi-token loops, plain decode
    # the vector rows of the CPU's instruction set), so the bits may differ by rounding; a wrong
    # slot would differ by O(1)
    assert_close("one token: compat out vs gdn.decode", o1[:, 0].numpy(), expected.numpy(), 1e-6)
    assert_close("one token: compat pool vs gdn.decode", pool1.numpy(), pool2.numpy(), 1e-6)


def test_compat_sglang_multi_token():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    n, tokens = 3, 2
    problem, acts, (A_log, dt_bias), pool = compat_problem(torch, rng, num_seqs=n * tokens)
    q, k, v, a, b = (x.unflatten(0, (n, tokens)) for x in acts)
    indices = torch.tensor([4, -1, 1])
    expected_pool = pool.clone()
    expected = gdn.decode_tokens(q, k, v, a, b, A_log, dt_bias, expected_pool, slot_indices=indices, scale=0.2)
    sglang_pool = pool.clone()
    o = compat.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, sglang_pool, indices,
                                                      scale=0.2, use_qk_l2norm_in_kernel=True)
    assert o.shape == (n, tokens, 4, 32) and torch.equal(o, expected) and torch.equal(sglang_pool, expected_pool)
    # varlen with token-row gates [tokens, HV], and target verify without the state write-back
    verify_pool = pool.clone()
    o2 = compat.fused_sigmoid_gating_delta_rule_update(A_log, acts[3], dt_bias, 1.0, 20.0, *(x[None] for x in acts[:3]),
                                                       acts[4], verify_pool, indices, scale=0.2,
                                                       use_qk_l2norm_in_kernel=True,
                                                       cu_seqlens=torch.tensor([0, 2, 4, 6]),
                                                       disable_state_update=True)
    assert o2.shape == (1, n * tokens, 4, 32) and torch.equal(o2[0], expected.flatten(0, 1))
    assert torch.equal(verify_pool, pool), "disable_state_update wrote the pool"
    for kwargs, fragment in ((dict(intermediate_states_buffer=torch.zeros(1)), "intermediate_states_buffer"),
                             (dict(retrieve_parent_token=torch.zeros(1)), "tree")):
        expect_error(NotImplementedError, lambda: compat.fused_sigmoid_gating_delta_rule_update(
            A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool.clone(), indices, **kwargs), fragment)


def test_compat_flashinfer_mtp():
    torch = require_torch()
    from gdn import compat

    rng = new_rng()
    n, tokens = 4, 3
    problem, acts, (A_log, dt_bias), pool = compat_problem(torch, rng, num_seqs=n * tokens, act_dtype=torch.bfloat16)
    q, k, v, a, b = (x.unflatten(0, (n, tokens)) for x in acts)
    read, write = torch.tensor([0, 1, -1, 2]), torch.tensor([3, 4, -1, 5], dtype=torch.int32)
    expected_pool = pool.clone()
    expected = gdn.decode_tokens(q, k, v, a, b, A_log, dt_bias, expected_pool, slot_indices=read,
                                 write_slot_indices=write.long())
    fi_pool = pool.clone()
    o, state = compat.gated_delta_rule_decode_pretranspose(q, k, v, None, A_log, a, dt_bias, b, initial_state=fi_pool,
                                                          initial_state_indices=read, output_state_indices=write)
    assert state is fi_pool and o.shape == (n, tokens, 4, 32) and o.dtype == torch.bfloat16
    assert torch.equal(o, expected) and torch.equal(fi_pool, expected_pool) and torch.all(o[2] == 0)
    # per-batch state, and disable_state_update (outputs only)
    batch_state = pool[:n].clone()
    expected_state = batch_state.clone()
    expected2 = gdn.decode_tokens(q, k, v, a, b, A_log, dt_bias, expected_state, slot_indices=torch.arange(n))
    o2, state2 = compat.gated_delta_rule_decode_pretranspose(q, k, v, batch_state, A_log, a, dt_bias, b)
    assert state2 is batch_state and torch.equal(o2, expected2) and torch.equal(batch_state, expected_state)
    frozen = pool.clone()
    o3, _ = compat.gated_delta_rule_decode_pretranspose(q, k, v, None, A_log, a, dt_bias, b, initial_state=frozen,
                                                       initial_state_indices=read, disable_state_update=True)
    assert torch.equal(frozen, pool) and torch.equal(o3, expected)
    expect_error(NotImplementedError, lambda: compat.gated_delta_rule_decode_pretranspose(
        q, k, v, None, A_log, a, dt_bias, b, initial_state=pool.clone(), initial_state_indices=read,
        intermediate_states_buffer=torch.zeros(n, tokens, 4, 32, 32)), "intermediate_states_buffer")
    many = [torch.cat([x] * 6, dim=1) for x in (q, k, v, a, b)]  # 18 tokens
    expect_error(NotImplementedError, lambda: compat.gated_delta_rule_decode_pretranspose(
        *many[:3], pool[:n].clone(), A_log, many[3], dt_bias, many[4]), "18 tokens", "16")


def test_compat_varlen_bound_without_reading_device_indices():
    """On a GPU the wrappers do not read cu_seqlens where they can avoid it (graph capture): the
    bound on tokens per sequence is the width of a 2-D slot table, else 1 for a decode batch (as
    many rows as sequences), else the row count up to 16. torch's meta device stands in for a
    GPU here: reading it would fail."""
    torch = require_torch()
    from gdn import compat

    who = "test"
    cu = torch.empty(5, dtype=torch.int64, device="meta")
    assert compat._tokens_per_sequence(who, torch.empty(1, 12, 2, 8, device="meta"), cu, 4) == (4, 4)
    assert compat._tokens_per_sequence(who, torch.empty(1, 4, 2, 8, device="meta"), cu) == (4, 1)
    assert compat._tokens_per_sequence(who, torch.empty(1, 9, 2, 8, device="meta"), cu) == (4, 9)
    expect_error(NotImplementedError, lambda: compat._tokens_per_sequence(
        who, torch.empty(1, 12, 2, 8, device="meta"), cu, 20), "20 tokens")
    # on the CPU cu_seqlens is read: the exact longest sequence
    expect_error(NotImplementedError, lambda: compat._tokens_per_sequence(
        who, torch.empty(1, 40, 2, 8), torch.tensor([0, 3, 3, 26, 40])), "23 tokens")
    assert compat._tokens_per_sequence(who, torch.empty(1, 40, 2, 8), torch.tensor([0, 13, 13, 26, 40])) == (4, 14)

def test_torch_custom_op_decode_tokens_and_compile():
    torch = require_torch()
    if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):
        skip(f"torch {torch.__version__} has no torch.library.custom_op")
    import gdn.torch_ops  # noqa: F401  registers torch.ops.gdn.decode_tokens_

    rng = new_rng()
    n, tokens = 3, 2
    problem, acts, (A_log, dt_bias), pool = compat_problem(torch, rng, num_seqs=n * tokens, num_slots=9)
    q, k, v, a, b = (x.unflatten(0, (n, tokens)) for x in acts)
    slots = torch.tensor([2, -1, 0])
    table = torch.tensor([[2, 3], [4, 5], [6, 7]])
    expected_pool = pool.clone()
    expected = gdn.decode_tokens(q, k, v, a, b, A_log, dt_bias, expected_pool, slot_indices=slots, token_slots=table)

    def step(q, k, v, a, b, pool):
        out = torch.empty_like(v)
        torch.ops.gdn.decode_tokens_(q, k, v, a, b, A_log, dt_bias, pool, out, slots, None, None, table)
        return out * 1.0

    def plain_step(q, k, v, a, b, pool):
        return gdn.decode_tokens(q, k, v, a, b, A_log, dt_bias, pool, slot_indices=slots, token_slots=table) * 1.0

    for function in (step, plain_step):
        eager_pool, compiled_pool = pool.clone(), pool.clone()
        assert torch.equal(function(q, k, v, a, b, eager_pool), expected) and torch.equal(eager_pool, expected_pool)
        compiled = torch.compile(function, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(q, k, v, a, b, compiled_pool), expected)
        assert torch.equal(compiled_pool, expected_pool)

def test_checked_mode_counter_on_the_host():
    """bad_index_rows (checked mode): accepted as a one-element int32 tensor or array on the
    pool's device; host backends refuse bad indices with an error and never touch the counter
    (the cuda kernel's counting is tested on the GPU: tests/test_cuda.c)."""
    torch = require_torch()
    rng = new_rng()
    problem, acts, params, pool = compat_problem(torch, rng)
    slots = torch.tensor([2, -1, 0, 5])
    expected_pool = pool.clone()
    expected = gdn.decode(*acts, *params, expected_pool, slots)
    for counter in (torch.full((1,), 7, dtype=torch.int32), np.full(1, 7, dtype=np.int32)):
        checked_pool = pool.clone()
        out = gdn.decode(*acts, *params, checked_pool, slots, bad_index_rows=counter)
        assert torch.equal(out, expected) and torch.equal(checked_pool, expected_pool)
        assert int(counter[0]) == 7, "a host backend wrote the counter"
    counter = torch.full((1,), 7, dtype=torch.int32)
    bad_pool = pool.clone()
    expect_error(gdn.GdnError, lambda: gdn.decode(*acts, *params, bad_pool, torch.tensor([2, 6, 0, 5]),
                                                  bad_index_rows=counter), "slot_indices[1] = 6")
    assert int(counter[0]) == 7 and torch.equal(bad_pool, pool)
    expect_error(TypeError, lambda: gdn.decode(*acts, *params, pool.clone(), slots,
                                               bad_index_rows=torch.zeros(1, dtype=torch.int64)), "takes i32")
    expect_error(ValueError, lambda: gdn.decode(*acts, *params, pool.clone(), slots,
                                                bad_index_rows=torch.zeros(2, dtype=torch.int32)), "[1]")
    frozen = np.zeros(1, dtype=np.int32)
    frozen.flags.writeable = False
    expect_error(ValueError, lambda: gdn.decode(*acts, *params, pool.clone(), slots, bad_index_rows=frozen),
                 "read-only")
    # decode_tokens takes it too; under torch.compile it is refused, not dropped
    tokens_pool = pool.clone()
    gdn.decode_tokens(*acts, *params, tokens_pool, slot_indices=slots, bad_index_rows=counter)
    assert torch.equal(tokens_pool, expected_pool) and int(counter[0]) == 7

    def compiled_step(pool):
        return gdn.decode(*acts, *params, pool, slots, bad_index_rows=counter) * 1.0

    try:
        torch.compile(compiled_step, backend="aot_eager", fullgraph=True)(pool.clone())
    except Exception as error:  # dynamo may wrap the NotImplementedError
        assert "bad_index_rows" in str(error), error
    else:
        raise AssertionError("bad_index_rows under torch.compile was accepted")


if __name__ == "__main__":
    run(globals())
