"""CPU tests of the gdn Python binding: NumPy only (torch tests skip without torch).

    python3 -m pytest tests/python          or          python3 tests/python/test_decode_cpu.py

gdn.decode on the cpu backend is compared with the float64 reference backend of the same
library and with an independent NumPy float64 implementation of SPEC section 1, on fresh random
inputs; then padding, strides, layouts, index dtypes, errors and the shared reference vectors.
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
from gdn_testlib import (Problem, bf16_round, import_gdn, new_rng, read_gdnv, reference_decode, rel_err,  # noqa: E402
                         require_torch, run, skip, vectors_dir)

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
    """Every field offset and size of gdn_decode_params and every enum value, as the C compiler
    sees gdn.h, against the ctypes mirror (skipped without a C compiler)."""
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
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, g=a1, beta=b1.sigmoid(), A_log=A_log,
                                                  use_gate_in_kernel=True), "precomputed beta")
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, g=-a1.exp(), beta=b1, A_log=A_log,
                                                  use_beta_sigmoid_in_kernel=True), "precomputed g")
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, beta=b1, use_beta_sigmoid_in_kernel=True), "no gate")
    two = [torch.cat([x, x], dim=1) for x in (q1, k1, v1, a1, b1)]
    expect_error(NotImplementedError, lambda: fla(*two[:3], g=two[3], beta=two[4], **gate), "2 tokens")
    expect_error(NotImplementedError, lambda: fla(q[None], k[None], v[None], g=a[None], beta=b[None],
                                                  cu_seqlens=torch.tensor([0, 2, 2, 3, 4]), **gate), "cu_seqlens")
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, g=a1, beta=b1, num_accepted_tokens=torch.ones(4),
                                                  **gate), "num_accepted_tokens")
    expect_error(NotImplementedError, lambda: fla(q1, k1, v1, g=a1, beta=b1, allow_neg_eigval=True, **gate),
                 "allow_neg_eigval")
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
    two = [torch.cat([x, x], dim=1) for x in (q1, k1, v1, a1, b1)]
    expect_error(NotImplementedError, lambda: compat.gated_delta_rule_decode_pretranspose(
        *two[:3], pool[:n], A_log, two[3], dt_bias, two[4]), "T = 2")


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


if __name__ == "__main__":
    run(globals())
