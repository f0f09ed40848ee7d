"""gdn.decode: one decode step of a Gated DeltaNet layer over a batch of sequences whose states
live in a pool (SPEC operation 1), on NumPy arrays or torch tensors (CPU or CUDA).

Python checks what the C library cannot see from pointers and sizes alone (that the tensors'
shapes agree with each other, one dtype and one device for all, contiguous inner dimensions);
the library checks the rest (dtypes per backend, strides, slot ranges, alignment, memory kind,
overlap) and refuses a bad call before it writes anything.
"""
import ctypes
import sys

from ._lib import LIB, Backend, DType, HeadMap, Layout
from ._tensors import cuda_stream_handle, describe, empty_like_shape
from .errors import check

_HEAD_MAPS = {"grouped": HeadMap.GROUPED, "tiled": HeadMap.TILED}
_LAYOUTS = {"vk": Layout.VK, "kv": Layout.KV}
_BACKENDS = {"auto": Backend.AUTO, "cpu": Backend.CPU, "cuda": Backend.CUDA, "reference": Backend.REFERENCE}
_ACT_DTYPES = (DType.F32, DType.F16, DType.BF16, DType.F64)
_STATE_DTYPES = (DType.F32, DType.BF16, DType.F64)
_INDEX_DTYPES = (DType.I32, DType.I64)
_ACTIVATIONS = "q, k, v, a, b and out"


def _option(name, value, choices):
    """choices[value], or ValueError naming the option and its valid values."""
    try:
        return choices[value]
    except (KeyError, TypeError):
        raise ValueError(f"{name} = {value!r}: expected one of {', '.join(map(repr, choices))}") from None


def _token_rows(t, row_ndim, row_names):
    """t seen as [N, *row] rows: a leading [N, 1, *row] token dimension (T = 1) is dropped."""
    if len(t.shape) == row_ndim + 2 and t.shape[1] == 1:
        return t.without_dim(1)
    if len(t.shape) != row_ndim + 1:
        raise ValueError(f"{t.name} has shape {t.shape}: expected [N, {row_names}] or [N, 1, {row_names}]")
    return t


def _expect_shape(t, expected, what):
    if t.shape != tuple(expected):
        raise ValueError(f"{t.name} has shape {tuple(t.obj.shape)}, expected {what} = {tuple(expected)}")


def _contiguous_from(t, first_dim):
    """Whether dimensions first_dim.. are packed row-major (strides of size-1 dims do not matter,
    nor any stride of an empty tensor)."""
    if 0 in t.shape:
        return True
    expected = 1
    for size, stride in zip(reversed(t.shape[first_dim:]), reversed(t.strides[first_dim:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _check_rows_contiguous(t):
    if not _contiguous_from(t, 1):
        raise ValueError(f"{t.name} (shape {tuple(t.obj.shape)}, strides {t.strides}): the dimensions after the "
                         "token dimension must be contiguous; only the token dimension may be strided")


def _check_contiguous(t):
    if not _contiguous_from(t, 0):
        raise ValueError(f"{t.name} (shape {tuple(t.obj.shape)}, strides {t.strides}) must be contiguous")


def _token_stride(t):
    """The stride between token rows for gdn: 0 ("packed") when there is at most one row, whose
    stride means nothing. A zero or negative stride cannot be expressed (0 means packed to gdn)."""
    if t.shape[0] <= 1:
        return 0
    if t.strides[0] <= 0:
        raise ValueError(f"{t.name}: token stride {t.strides[0]} (a broadcast or reversed view); "
                         "gdn needs distinct rows at increasing addresses")
    return t.strides[0]


def _check_dtype(t, allowed, what):
    if t.dtype not in allowed:
        names = ", ".join(d.name.lower() for d in allowed)
        raise TypeError(f"{t.name} has dtype {t.dtype_name}; {what} takes {names}")


def _check_same_dtype(tensors, what):
    first = tensors[0]
    for t in tensors[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{t.name} has dtype {t.dtype_name} but {first.name} has {first.dtype_name}: "
                            f"{what} share one dtype")


def _check_one_device(tensors):
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        listing = ", ".join(f"{t.name} on {t.device}" for t in tensors)
        raise ValueError(f"all tensors must be on one device: {listing}")


def _check_writable(t):
    if not t.writable:
        raise ValueError(f"{t.name} is read-only; gdn writes it")


class _Call:
    """One validated decode call: the tensors seen as gdn rows, and the output (allocated if
    the caller gave none)."""

    def __init__(self, q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices, layout):
        self.q = _token_rows(describe("q", q), 2, "H, K")
        self.k = _token_rows(describe("k", k), 2, "H, K")
        self.v = _token_rows(describe("v", v), 2, "HV, V")
        self.a = _token_rows(describe("a", a), 1, "HV")
        self.b = _token_rows(describe("b", b), 1, "HV")
        self.A_log = describe("A_log", A_log)
        self.dt_bias = describe("dt_bias", dt_bias)
        self.pool = describe("state_pool", state_pool)
        self.slots = describe("slot_indices", slot_indices)
        self.write_slots = None if write_slot_indices is None else describe("write_slot_indices", write_slot_indices)
        self.layout = layout
        self._check_shapes()
        self._check_dtypes()
        # out comes last: it is allocated only once the inputs are known to be good.
        self.out_obj = out if out is not None else empty_like_shape(self.v, tuple(self.v.obj.shape))
        self.out = _token_rows(describe("out", self.out_obj), 2, "HV, V")
        _expect_shape(self.out, (self.num_seqs, self.num_v_heads, self.head_dim_v), "[N, HV, V]")
        _check_same_dtype([self.q, self.out], _ACTIVATIONS)
        self._check_layout_and_memory()

    @property
    def indices(self):
        return [self.slots] + ([self.write_slots] if self.write_slots else [])

    @property
    def activations(self):
        return [self.q, self.k, self.v, self.a, self.b]

    def _check_shapes(self):
        self.num_seqs, self.num_q_heads, self.head_dim_k = self.q.shape
        _, self.num_v_heads, self.head_dim_v = self.v.shape
        n, hv = self.num_seqs, self.num_v_heads
        _expect_shape(self.k, self.q.shape, "the shape of q [N, H, K]")
        _expect_shape(self.v, (n, hv, self.head_dim_v), "[N, HV, V] with N from q")
        _expect_shape(self.a, (n, hv), "[N, HV]")
        _expect_shape(self.b, (n, hv), "[N, HV]")
        _expect_shape(self.A_log, (hv,), "[HV]")
        _expect_shape(self.dt_bias, (hv,), "[HV]")
        for t in self.indices:
            _expect_shape(t, (n,), "[N]")
        row = (self.head_dim_v, self.head_dim_k) if self.layout == Layout.VK else (self.head_dim_k, self.head_dim_v)
        if len(self.pool.shape) != 4 or self.pool.shape[1:] != (hv,) + row:
            names = "[slots, HV, V, K]" if self.layout == Layout.VK else "[slots, HV, K, V]"
            raise ValueError(f"state_pool has shape {self.pool.shape}, expected {names} = "
                             f"[slots, {hv}, {row[0]}, {row[1]}] for layout {self.layout.name.lower()}")

    def _check_dtypes(self):
        _check_dtype(self.q, _ACT_DTYPES, "an activation")
        _check_same_dtype(self.activations, _ACTIVATIONS)
        for t in (self.A_log, self.dt_bias):
            _check_dtype(t, (DType.F32,), "a gate parameter")
        _check_dtype(self.pool, _STATE_DTYPES, "the state pool")
        _check_dtype(self.slots, _INDEX_DTYPES, "a slot index array")
        _check_same_dtype(self.indices, "slot_indices and write_slot_indices")

    def _check_layout_and_memory(self):
        everything = self.activations + [self.out, self.A_log, self.dt_bias, self.pool] + self.indices
        _check_one_device(everything)
        for t in self.activations + [self.out]:
            _check_rows_contiguous(t)
        for t in [self.A_log, self.dt_bias, self.pool] + self.indices:
            _check_contiguous(t)
        _check_writable(self.out)
        _check_writable(self.pool)

    @property
    def device(self):
        return self.pool.device

    def params(self, *, scale, qk_l2norm, head_map, null_slot_zero, backend, num_threads):
        """The gdn_decode_params of this call."""
        p = LIB.new_params()
        p.num_seqs, p.num_q_heads, p.num_v_heads = self.num_seqs, self.num_q_heads, self.num_v_heads
        p.head_dim_k, p.head_dim_v = self.head_dim_k, self.head_dim_v
        p.act_dtype = self.q.dtype
        for name in ("q", "k", "v", "a", "b", "out"):
            t = getattr(self, name)
            setattr(p, name, t.ptr)
            setattr(p, name + "_stride", _token_stride(t))
        p.A_log, p.dt_bias = self.A_log.ptr, self.dt_bias.ptr
        p.scale = scale
        p.qk_l2norm = int(bool(qk_l2norm))
        p.head_map = head_map
        p.state_pool, p.num_slots = self.pool.ptr, self.pool.shape[0]
        p.state_layout, p.state_dtype = self.layout, self.pool.dtype
        p.slot_indices = self.slots.ptr
        p.write_slot_indices = self.write_slots.ptr if self.write_slots else None
        p.index_dtype = self.slots.dtype
        p.null_slot_zero = int(bool(null_slot_zero))
        p.backend = backend
        # The stream matters only to the cuda backend; it must be the one torch is using on the
        # pool's device, so that the kernel is ordered after the producers of q, k, v, a, b.
        p.stream = cuda_stream_handle(self.device) if self.device.startswith("cuda") else None
        p.num_threads = num_threads
        return p


def _scale_value(scale):
    """The float gdn takes for `scale`: None and 0 both mean 1/sqrt(K)."""
    if scale is None:
        return 0.0
    try:
        return float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale = {scale!r} is not a number") from None


def _prepare(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices, scale, qk_l2norm,
             head_map, layout, null_slot_zero, backend, num_threads):
    """(params, out) of a decode call, every Python-side check done."""
    head_map = _option("head_map", head_map, _HEAD_MAPS)
    layout = _option("layout", layout, _LAYOUTS)
    backend = _option("backend", backend, _BACKENDS)
    scale = _scale_value(scale)
    if not isinstance(num_threads, int) or isinstance(num_threads, bool):
        raise TypeError(f"num_threads = {num_threads!r} is not an int")
    call = _Call(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices, layout)
    params = call.params(scale=scale, qk_l2norm=qk_l2norm, head_map=head_map, null_slot_zero=null_slot_zero,
                         backend=backend, num_threads=num_threads)
    return params, call.out_obj


def decode(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, *, out=None, write_slot_indices=None,
           scale=0.0, qk_l2norm=True, head_map="grouped", layout="vk", null_slot_zero=False, backend="auto",
           num_threads=0):
    """One decode step (one token per sequence) of a Gated DeltaNet layer; returns `out`.

    Tensors (all NumPy arrays or torch tensors, all on one device; N sequences, H query/key
    heads, HV value heads (a multiple of H), head sizes K and V):
      q, k        [N, H, K]    activation dtype
      v           [N, HV, V]   activation dtype
      a, b        [N, HV]      activation dtype: gate input (before dt_bias) and beta logit
      A_log, dt_bias [HV]      float32
      state_pool  [slots, HV, V, K] (layout "vk") or [slots, HV, K, V] ("kv"); updated in place
      slot_indices [N]         int32 or int64: the slot each sequence reads and writes
      out         [N, HV, V]   activation dtype; allocated like v when not given
    q, k, v, a, b and out may also carry a token dimension of size 1 ([N, 1, ...], as engines
    pass them). Each may have its own stride between sequences (slices of a packed projection);
    the dimensions after the first must be contiguous, and A_log, dt_bias, the pool and the
    indices wholly contiguous. Activation dtype: float32, float16, bfloat16 (torch only: NumPy
    has no bfloat16), float64 with backend="reference"; one dtype for all of q, k, v, a, b, out.
    State dtype: float32, bfloat16 (torch), float64 (reference).

    A negative slot index (or 0 with null_slot_zero=True, vLLM's null block) is a padding row:
    its output row is written as zeros and no state is read or written. write_slot_indices
    (optional, [N], same dtype as slot_indices) sends the new state to another slot; a negative
    write slot computes the output but saves no state. Slots written by one call must be
    distinct and not read by another row of the call.

    scale: query scale, None or 0 = 1/sqrt(K). qk_l2norm: l2-normalise q and k in the kernel.
    head_map: "grouped" (h = hv // (HV/H): vLLM, SGLang, FLA, FlashInfer) or "tiled" (h = hv % H,
    llama.cpp). backend: "auto" (the GDN_BACKEND environment variable, else cuda for CUDA
    tensors, else cpu), "cpu", "cuda" or "reference" (float64, for tests). num_threads: cpu
    worker threads, 0 = $GDN_NUM_THREADS or all cores.

    On CUDA the kernel is enqueued on torch's current stream of the pool's device and the call
    returns without synchronising; given `out`, it allocates nothing and copies nothing to the
    host, so it can be captured in a CUDA graph. Errors: TypeError/ValueError for arguments
    refused here, gdn.GdnError (GdnArgumentError is also a ValueError) with the library's
    message for those the library refuses; in every case nothing was written.
    """
    if _torch_compiling():
        return _decode_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out,
                                      write_slot_indices, scale, qk_l2norm, head_map, layout, null_slot_zero, backend,
                                      num_threads)
    params, out = _prepare(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices,
                           scale, qk_l2norm, head_map, layout, null_slot_zero, backend, num_threads)
    check(LIB.cdll.gdn_decode(ctypes.byref(params)), "gdn_decode")
    return out


def _torch_compiling():
    """Whether torch.compile (dynamo) or torch.export is tracing this call."""
    compiler = getattr(sys.modules.get("torch"), "compiler", None)
    return compiler is not None and compiler.is_compiling()


def _decode_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices, scale,
                           qk_l2norm, head_map, layout, null_slot_zero, backend, num_threads):
    """decode() as torch.compile sees it: one call of the custom operator torch.ops.gdn.decode_,
    instead of a trace of the checks above that would end at the ctypes call in a graph break.
    The operator runs decode() itself, checks included, when the compiled code runs."""
    import torch

    from . import torch_ops  # noqa: F401  registers torch.ops.gdn.decode_

    if out is None:
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    torch.ops.gdn.decode_(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices,
                          _scale_value(scale), bool(qk_l2norm), head_map, layout, bool(null_slot_zero), backend,
                          num_threads)
    return out


def decode_backend_for(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, *, out=None,
                       write_slot_indices=None, scale=0.0, qk_l2norm=True, head_map="grouped", layout="vk",
                       null_slot_zero=False, backend="auto", num_threads=0):
    """The backend ("cpu", "cuda" or "reference") that decode() with these arguments would run
    on, without running it; raises what decode() would raise, except for slot index values."""
    params, _ = _prepare(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices,
                         scale, qk_l2norm, head_map, layout, null_slot_zero, backend, num_threads)
    chosen = ctypes.c_int()
    check(LIB.cdll.gdn_decode_backend_for(ctypes.byref(params), ctypes.byref(chosen)), "gdn_decode_backend_for")
    return Backend(chosen.value).name.lower()
