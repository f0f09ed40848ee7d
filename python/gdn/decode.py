"""gdn.decode and gdn.decode_tokens: the decode step of a Gated DeltaNet layer over a batch of
sequences whose states live in a pool, one token per sequence (SPEC operation 1) or several
(SPEC operation 2: speculative verify, MTP), on NumPy arrays or torch tensors (CPU or CUDA).

Python checks what the C library cannot see from pointers and sizes alone (that the tensors'
shapes agree with each other, one dtype and one device for all, contiguous inner dimensions,
token rows that lie evenly spaced, and on the host that cu_seqlens stays inside the activations);
the library checks the rest (dtypes per backend, strides, slot ranges, token counts, alignment,
memory kind, overlap) and refuses a bad call before it writes anything.

Both functions go through one _Call: every activation is seen as "token rows" [R, ...] (R = N
for decode, N*T or the total of cu_seqlens for decode_tokens) with one stride between rows, which
is what gdn_decode_params describes.
"""
import ctypes
import sys

from ._lib import (COUNTER_FIELD_END, LIB, MAX_TOKENS, MULTI_TOKEN_FIELDS_END, SLOT_STRIDE_FIELD_END,
                   VARLEN_FIELDS_END, Backend, DType, HeadMap, Layout)
from ._tensors import cuda_stream_handle, describe, empty_like_shape
from .errors import check

_HEAD_MAPS = {"grouped": HeadMap.GROUPED, "tiled": HeadMap.TILED}
_LAYOUTS = {"vk": Layout.VK, "kv": Layout.KV}
_BACKENDS = {"auto": Backend.AUTO, "cpu": Backend.CPU, "cuda": Backend.CUDA, "reference": Backend.REFERENCE}
_ACT_DTYPES = (DType.F32, DType.F16, DType.BF16, DType.F64)
_STATE_DTYPES = (DType.F32, DType.BF16, DType.F64)
_INDEX_DTYPES = (DType.I32, DType.I64)
_ACTIVATIONS = "q, k, v, a, b and out"
_ACTIVATIONS_PRECOMPUTED = "q, k, v, beta and out"
_FLAG_DTYPES = ("bool", "uint8")  # has_initial_state: one byte per sequence


def _option(name, value, choices):
    """choices[value], or ValueError naming the option and its valid values."""
    try:
        return choices[value]
    except (KeyError, TypeError):
        raise ValueError(f"{name} = {value!r}: expected one of {', '.join(map(repr, choices))}") from None


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _merge_leading(t):
    """t [A, B, *row] seen as A*B token rows [A*B, *row]. Row r = a*B + b lies at a*stride(A) +
    b*stride(B), which is one stride per row only when stride(A) = B * stride(B) (or A or B is 1)."""
    count, tokens = t.shape[:2]
    seq_stride, token_stride = t.strides[:2]
    if tokens == 1 or count * tokens == 0:
        stride = seq_stride
    elif count == 1:
        stride = token_stride
    elif seq_stride == tokens * token_stride:
        stride = token_stride
    else:
        raise ValueError(f"{t.name} (shape {tuple(t.obj.shape)}, strides {t.strides}): its token rows are not evenly "
                         f"spaced: the stride of dimension 0 ({seq_stride}) must be {tokens} x the stride of dimension "
                         f"1 ({token_stride}); gdn takes one stride between token rows (.contiguous() makes it so)")
    return t.merged_leading(stride)


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


def _check_pool_layout(t):
    """The pool's three inner dimensions packed; its slots any distance apart but not closer than
    one slot (a paged pool: e.g. storage[:, :HV] or storage[:, 1:] of [slots, HV+1, V, K], the
    view vLLM hands over; the library's state_slot_stride, gdn 0.4)."""
    if not _contiguous_from(t, 1):
        raise ValueError(f"{t.name} (shape {tuple(t.obj.shape)}, strides {t.strides}): the dimensions after the "
                         "slot dimension must be contiguous; only the slot dimension may be strided")
    slot = t.shape[1] * t.shape[2] * t.shape[3]
    if t.shape[0] > 1 and 0 not in t.shape and t.strides[0] < slot:
        raise ValueError(f"{t.name} (shape {tuple(t.obj.shape)}, strides {t.strides}): slots {t.strides[0]} "
                         f"elements apart overlap (one slot is {slot} elements)")


def _slot_stride(t):
    """state_slot_stride for the pool: 0 when packed (or one slot, whose stride means nothing)."""
    slot = t.shape[1] * t.shape[2] * t.shape[3]
    return 0 if t.shape[0] <= 1 or t.strides[0] == slot else t.strides[0]


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


def _check_gate_form(a, b, A_log, dt_bias, g, beta):
    """Whether the gates come precomputed (g and beta) or raw (a, b, A_log, dt_bias): one form,
    whole. TypeError naming what is missing or doubled."""
    raw = dict(a=a, b=b, A_log=A_log, dt_bias=dt_bias)
    if g is None and beta is None:
        missing = [name for name, x in raw.items() if x is None]
        if missing:
            raise TypeError(f"{', '.join(missing)} is None: give the raw gates a, b, A_log and dt_bias, or the "
                            "precomputed g= and beta=")
        return False
    if g is None or beta is None:
        raise TypeError(f"g and beta come together ({'beta' if beta is None else 'g'} is None)")
    given = [name for name, x in raw.items() if x is not None]
    if given:
        raise TypeError(f"g and beta are given, and so is {', '.join(given)}: give one form of the gates, the raw "
                        "a, b, A_log, dt_bias or the precomputed g, beta (pass None for the other form)")
    return True


class _Call:
    """One validated call: the activations and out seen as token rows [R, ...], the gate
    parameters, the pool, the index arrays, and the output (allocated when the caller gave none).

    Subclasses say how a tensor becomes rows (_form, _lead), which index arrays there are and
    what shapes they must have (_check_indices), and add their fields to the params."""

    row_letter = "N"

    def __init__(self, q, k, v, a, b, A_log, dt_bias, state_pool, out, layout, indices, g=None, beta=None,
                 has_initial_state=None):
        self.layout = layout
        self.precomputed = _check_gate_form(a, b, A_log, dt_bias, g, beta)
        q = describe("q", q)
        self._form(q)
        self.q = self._rows(q, 2, "H, K")
        self.k = self._rows(describe("k", k), 2, "H, K")
        self.v = self._rows(describe("v", v), 2, "HV, V")
        if self.precomputed:
            # gdn 0.5: the log-decay g (float32) and beta after the sigmoid (activation dtype)
            self.g = self._rows(describe("g", g), 1, "HV")
            self.beta = self._rows(describe("beta", beta), 1, "HV")
            self.a = self.b = self.A_log = self.dt_bias = None
        else:
            self.a = self._rows(describe("a", a), 1, "HV")
            self.b = self._rows(describe("b", b), 1, "HV")
            self.A_log = describe("A_log", A_log)
            self.dt_bias = describe("dt_bias", dt_bias)
            self.g = self.beta = None
        self.pool = describe("state_pool", state_pool)
        # the index arrays given, in a fixed order (slot_indices first)
        self.index = {name: describe(name, x) for name, x in indices.items() if x is not None}
        self.initial = None if has_initial_state is None else describe("has_initial_state", has_initial_state)
        self._check_shapes()
        self._check_indices()
        self._check_initial()
        self._check_dtypes()
        # out comes last: it is allocated only once the inputs are known to be good.
        self.out_obj = out if out is not None else empty_like_shape(self.v, tuple(self.v.obj.shape))
        self.out = self._rows(describe("out", self.out_obj), 2, "HV, V")
        r = self.row_letter
        _expect_shape(self.out, (self.num_rows, self.num_v_heads, self.head_dim_v), f"[{r}, HV, V]")
        _check_same_dtype([self.q, self.out], self.activation_names)
        self._check_layout_and_memory()

    # -- how tensors become token rows (decode: [N, ...] or [N, 1, ...]) --

    def _form(self, q):
        self.lead = (None, 1)
        self.forms = "[N, {row}] or [N, 1, {row}]"

    def _rows(self, t, row_ndim, row_names):
        """t as token rows [R, *row]: as given, or with its two leading dimensions (which must
        be self.lead, None matching any size) merged into one."""
        if len(t.shape) == row_ndim + 2 and all(want is None or got == want
                                                for got, want in zip(t.shape[:2], self.lead)):
            return _merge_leading(t)
        if len(t.shape) != row_ndim + 1:
            raise ValueError(f"{t.name} has shape {tuple(t.obj.shape)}: expected "
                             f"{self.forms.format(row=row_names)}")
        return t

    @property
    def indices(self):
        return list(self.index.values())

    @property
    def activations(self):
        """The tensors in the activation dtype (out apart)."""
        if self.precomputed:
            return [self.q, self.k, self.v, self.beta]
        return [self.q, self.k, self.v, self.a, self.b]

    @property
    def activation_names(self):
        return _ACTIVATIONS_PRECOMPUTED if self.precomputed else _ACTIVATIONS

    @property
    def row_tensors(self):
        """The tensors with one row per token (out apart): the activations, and g."""
        return self.activations + ([self.g] if self.precomputed else [])

    @property
    def gate_params(self):
        """The per-head gate parameters (none with precomputed gates)."""
        return [] if self.precomputed else [self.A_log, self.dt_bias]

    @property
    def flags(self):
        """has_initial_state when given, as a list."""
        return [] if self.initial is None else [self.initial]

    def _check_shapes(self):
        self.num_rows, self.num_q_heads, self.head_dim_k = self.q.shape
        _, self.num_v_heads, self.head_dim_v = self.v.shape
        rows, hv, r = self.num_rows, self.num_v_heads, self.row_letter
        _expect_shape(self.k, self.q.shape, f"the shape of q [{r}, H, K]")
        _expect_shape(self.v, (rows, hv, self.head_dim_v), f"[{r}, HV, V] with {r} from q")
        for t in ([self.g, self.beta] if self.precomputed else [self.a, self.b]):
            _expect_shape(t, (rows, hv), f"[{r}, HV]")
        for t in self.gate_params:
            _expect_shape(t, (hv,), "[HV]")
        row = (self.head_dim_v, self.head_dim_k) if self.layout == Layout.VK else (self.head_dim_k, self.head_dim_v)
        if len(self.pool.shape) != 4 or self.pool.shape[1:] != (hv,) + row:
            names = "[slots, HV, V, K]" if self.layout == Layout.VK else "[slots, HV, K, V]"
            raise ValueError(f"state_pool has shape {self.pool.shape}, expected {names} = "
                             f"[slots, {hv}, {row[0]}, {row[1]}] for layout {self.layout.name.lower()}")

    def _check_indices(self):
        self.num_seqs = self.num_rows
        for t in self.indices:
            _expect_shape(t, (self.num_seqs,), "[N]")

    def _check_initial(self):
        """has_initial_state: one bool (or uint8) per sequence, 0 = start from a zero state."""
        t = self.initial
        if t is None:
            return
        _expect_shape(t, (self.num_seqs,), "[N]")
        if t.dtype_name not in _FLAG_DTYPES:
            raise TypeError(f"has_initial_state has dtype {t.dtype_name}; it takes bool or uint8 (one byte per "
                            "sequence: 0 = start from a zero state)")

    def _check_dtypes(self):
        _check_dtype(self.q, _ACT_DTYPES, "an activation")
        _check_same_dtype(self.activations, self.activation_names)
        for t in self.gate_params:
            _check_dtype(t, (DType.F32,), "a gate parameter")
        if self.precomputed:
            _check_dtype(self.g, (DType.F32,), "the precomputed log-decay g")
        _check_dtype(self.pool, _STATE_DTYPES, "the state pool")
        if self.indices:
            _check_dtype(self.indices[0], _INDEX_DTYPES, "an index array")
            _check_same_dtype(self.indices, " and ".join(self.index) if len(self.index) <= 2 else
                              "the index arrays " + ", ".join(self.index))

    def _check_layout_and_memory(self):
        everything = self.row_tensors + [self.out] + self.gate_params + [self.pool] + self.indices + self.flags
        _check_one_device(everything)
        for t in self.row_tensors + [self.out]:
            _check_rows_contiguous(t)
        for t in self.gate_params + [t for t in self.indices if t.name != "token_slots"] + self.flags:
            _check_contiguous(t)
        _check_pool_layout(self.pool)
        _check_writable(self.out)
        _check_writable(self.pool)

    @property
    def device(self):
        return self.pool.device

    def _ptr(self, name):
        t = self.index.get(name)
        return t.ptr if t is not None else None

    def counter(self, bad_index_rows):
        """The pointer for checked mode's bad_index_rows: a one-element int32 tensor (read as
        uint32 by the library) on the pool's device, or None (checked mode off)."""
        if bad_index_rows is None:
            return None
        if LIB.params_size < COUNTER_FIELD_END:
            raise RuntimeError(f"gdn: {LIB.path} (version {LIB.version}) has no checked mode (bad_index_rows)")
        t = describe("bad_index_rows", bad_index_rows)
        _check_dtype(t, (DType.I32,), "the checked-mode counter")
        if t.shape not in ((1,), ()):
            raise ValueError(f"bad_index_rows has shape {tuple(t.obj.shape)}, expected [1] (one counter)")
        _check_one_device([self.pool, t])
        _check_writable(t)
        return t.ptr

    def params(self, *, scale, qk_l2norm, head_map, null_slot_zero, backend, num_threads):
        """The gdn_decode_params of this call."""
        p = LIB.new_params()
        p.num_seqs, p.num_q_heads, p.num_v_heads = self.num_seqs, self.num_q_heads, self.num_v_heads
        p.head_dim_k, p.head_dim_v = self.head_dim_k, self.head_dim_v
        p.act_dtype = self.q.dtype
        if (self.precomputed or self.initial is not None) and LIB.params_size < VARLEN_FIELDS_END:
            raise RuntimeError(f"gdn: {LIB.path} (version {LIB.version}) takes neither precomputed g and beta nor "
                               "has_initial_state (gdn 0.5 does)")
        gates = ("g", "beta") if self.precomputed else ("a", "b")
        for name in ("q", "k", "v") + gates + ("out",):
            t = getattr(self, name)
            setattr(p, name, t.ptr)
            setattr(p, name + "_stride", _token_stride(t))
        if not self.precomputed:
            p.A_log, p.dt_bias = self.A_log.ptr, self.dt_bias.ptr
        if self.initial is not None:
            p.has_initial_state = self.initial.ptr
        p.scale = scale
        p.qk_l2norm = int(bool(qk_l2norm))
        p.head_map = head_map
        p.state_pool, p.num_slots = self.pool.ptr, self.pool.shape[0]
        p.state_layout, p.state_dtype = self.layout, self.pool.dtype
        slot_stride = _slot_stride(self.pool)
        if slot_stride:
            if LIB.params_size < SLOT_STRIDE_FIELD_END:
                raise RuntimeError(f"gdn: {LIB.path} (version {LIB.version}) takes packed pools only; this pool's "
                                   f"slots are {slot_stride} elements apart (gdn 0.4 takes that)")
            p.state_slot_stride = slot_stride
        p.slot_indices = self._ptr("slot_indices")
        p.write_slot_indices = self._ptr("write_slot_indices")
        if self.indices:
            p.index_dtype = self.indices[0].dtype
        p.null_slot_zero = int(bool(null_slot_zero))
        p.backend = backend
        # The stream matters only to the cuda backend; it must be the one torch is using on the
        # pool's device, so that the kernel is ordered after the producers of q, k, v, a, b.
        p.stream = cuda_stream_handle(self.device) if self.device.startswith("cuda") else None
        p.num_threads = num_threads
        return p


class _TokensCall(_Call):
    """A decode_tokens call: T tokens per sequence, fixed ([N, T, ...] or [N*T, ...] rows) or
    variable (token rows [R, ...] with cu_seqlens [N+1] and num_tokens >= the longest sequence)."""

    row_letter = "R"

    def __init__(self, q, k, v, a, b, A_log, dt_bias, state_pool, out, layout, indices, num_tokens, g=None,
                 beta=None, has_initial_state=None):
        if num_tokens is not None and not _is_int(num_tokens):
            raise TypeError(f"num_tokens = {num_tokens!r} is not an int")
        if num_tokens is not None and num_tokens < 1:
            raise ValueError(f"num_tokens = {num_tokens} must be at least 1 (1..{MAX_TOKENS})")
        self.num_tokens_given = num_tokens
        self.varlen = indices.get("cu_seqlens") is not None
        super().__init__(q, k, v, a, b, A_log, dt_bias, state_pool, out, layout, indices, g=g, beta=beta,
                         has_initial_state=has_initial_state)

    def _form(self, q):
        given = self.num_tokens_given
        if self.varlen:
            if given is None:
                raise ValueError("num_tokens is required with cu_seqlens: the most tokens any sequence has (an upper "
                                 "bound is enough; the library cannot read cu_seqlens on the GPU before the launch)")
            self.num_tokens, self.lead = given, (1, None)
            self.forms = "token rows [R, {row}] (or [1, R, {row}]) with cu_seqlens"
            return
        if len(q.shape) == 4:
            num_seqs, tokens = q.shape[:2]
            if given is not None and given != tokens:
                raise ValueError(f"num_tokens = {given} but q has shape {tuple(q.obj.shape)}: {tokens} tokens per "
                                 "sequence")
            self.num_tokens, self.lead = tokens, (num_seqs, tokens)
            self.forms = f"[N, T, {{row}}] = [{num_seqs}, {tokens}, {{row}}] or token rows [N*T, {{row}}]"
            return
        tokens = 1 if given is None else given
        if len(q.shape) == 3 and q.shape[0] % tokens:
            raise ValueError(f"q has shape {tuple(q.obj.shape)}: {q.shape[0]} token rows are not N sequences of "
                             f"num_tokens = {tokens} (pass cu_seqlens for sequences of different lengths)")
        rows = q.shape[0] if q.shape else 0
        self.num_tokens, self.lead = tokens, (rows // tokens, tokens)
        self.forms = f"token rows [N*T, {{row}}] with T = num_tokens = {tokens}, or [N, T, {{row}}]"

    def _check_indices(self):
        index, tokens = self.index, self.num_tokens
        if self.varlen:
            cu = index["cu_seqlens"]
            if len(cu.shape) != 1 or cu.shape[0] < 1:
                raise ValueError(f"cu_seqlens has shape {tuple(cu.obj.shape)}, expected [N + 1]")
            self.num_seqs = cu.shape[0] - 1
        else:
            self.num_seqs = self.lead[0]  # [N, T, ...], or N*T rows of num_tokens each
        n = self.num_seqs
        for name in ("slot_indices", "write_slot_indices", "num_accepted"):
            if name in index:
                _expect_shape(index[name], (n,), "[N]")
        slots = index.get("token_slots")
        if slots is not None and (len(slots.shape) != 2 or slots.shape[0] != n or slots.shape[1] < tokens):
            raise ValueError(f"token_slots has shape {tuple(slots.obj.shape)}, expected [N, W] with N = {n} and "
                             f"W >= num_tokens = {tokens}: column t is the slot of the state after token t")

    def _token_slots_stride(self):
        """token_slots_stride: the row stride of token_slots. The library reads whole rows of that
        many entries (it checks them all, and num_accepted may select any of them), so a row stride
        longer than the view's width must still lie inside the array's memory."""
        slots = self.index["token_slots"]
        count, width = slots.shape
        if width > 1 and slots.strides[1] != 1:
            raise ValueError(f"token_slots (shape {tuple(slots.obj.shape)}, strides {slots.strides}): its rows must "
                             "be contiguous")
        if count <= 1 or width == 0:
            return width
        stride = slots.strides[0]
        if stride < width:
            raise ValueError(f"token_slots (shape {tuple(slots.obj.shape)}, strides {slots.strides}): rows {stride} "
                             f"elements apart overlap rows of {width}")
        if stride > width:
            itemsize = 4 if slots.dtype == DType.I32 else 8
            end, buffer_end = slots.ptr + count * stride * itemsize, slots.buffer_end()
            if buffer_end is None or end > buffer_end:
                raise ValueError(f"token_slots has {width} columns but rows {stride} apart: the library reads all "
                                 f"{stride} entries of each row, and the last row's would lie past the array's "
                                 "memory; pass a contiguous [N, W] table")
        return stride

    def _check_host_rows(self):
        """On the host, cu_seqlens can be read: its last entry must not pass the token rows given
        (the library knows the rows only through cu_seqlens)."""
        cu = self.index.get("cu_seqlens")
        if cu is None or cu.device != "cpu" or self.num_seqs == 0:
            return
        last = int(cu.obj[-1])
        if last > self.num_rows:
            raise ValueError(f"cu_seqlens[{self.num_seqs}] = {last} but the activations have {self.num_rows} token "
                             "rows")

    def params(self, **options):
        if LIB.params_size < MULTI_TOKEN_FIELDS_END:
            raise RuntimeError(f"gdn: {LIB.path} (version {LIB.version}) has no multi-token decode: its "
                               f"gdn_decode_params ends at byte {LIB.params_size}")
        self._check_host_rows()
        p = super().params(**options)
        p.num_tokens = self.num_tokens
        p.cu_seqlens = self._ptr("cu_seqlens")
        if self.varlen and LIB.params_size >= VARLEN_FIELDS_END:
            # gdn 0.5: the token rows the activations hold, so that the library bounds cu_seqlens by
            # them (and not by N * num_tokens, which a long prefill among decodes would exceed).
            p.total_tokens = self.num_rows
        p.num_accepted = self._ptr("num_accepted")
        if "token_slots" in self.index:
            p.token_slots = self.index["token_slots"].ptr
            p.token_slots_stride = self._token_slots_stride()
        if self.num_rows == 0:
            # No token row: nothing to read or write, and a torch tensor without elements may have
            # a NULL data pointer. The library still checks the options (num_seqs = 0 is a no-op).
            p.num_seqs = 0
        return p


def _scale_value(scale):
    """The float gdn takes for `scale`: None and 0 both mean 1/sqrt(K)."""
    if scale is None:
        return 0.0
    try:
        return float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale = {scale!r} is not a number") from None


def _options(scale, head_map, layout, backend, num_threads):
    """(layout, the params options) after checking the options every call takes."""
    options = dict(head_map=_option("head_map", head_map, _HEAD_MAPS), backend=_option("backend", backend, _BACKENDS),
                   scale=_scale_value(scale))
    if not _is_int(num_threads):
        raise TypeError(f"num_threads = {num_threads!r} is not an int")
    options["num_threads"] = num_threads
    return _option("layout", layout, _LAYOUTS), options


def _prepare(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices, scale, qk_l2norm,
             head_map, layout, null_slot_zero, backend, num_threads, bad_index_rows=None, g=None, beta=None):
    """(params, out) of a decode call, every Python-side check done."""
    layout, options = _options(scale, head_map, layout, backend, num_threads)
    if slot_indices is None:
        raise TypeError("slot_indices: expected a torch.Tensor or a numpy.ndarray, got None")
    call = _Call(q, k, v, a, b, A_log, dt_bias, state_pool, out, layout,
                 dict(slot_indices=slot_indices, write_slot_indices=write_slot_indices), g=g, beta=beta)
    params = call.params(qk_l2norm=qk_l2norm, null_slot_zero=null_slot_zero, **options)
    params.bad_index_rows = call.counter(bad_index_rows)
    return params, call.out_obj


def _prepare_tokens(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, num_tokens, cu_seqlens, token_slots,
                    num_accepted, out, write_slot_indices, scale, qk_l2norm, head_map, layout, null_slot_zero, backend,
                    num_threads, bad_index_rows=None, g=None, beta=None, has_initial_state=None):
    """(params, out) of a decode_tokens (or forward) call, every Python-side check done."""
    layout, options = _options(scale, head_map, layout, backend, num_threads)
    if slot_indices is None and num_accepted is None:
        raise ValueError("slot_indices is required (only token_slots with num_accepted can stand in for it)")
    indices = dict(slot_indices=slot_indices, write_slot_indices=write_slot_indices, cu_seqlens=cu_seqlens,
                   token_slots=token_slots, num_accepted=num_accepted)
    call = _TokensCall(q, k, v, a, b, A_log, dt_bias, state_pool, out, layout, indices, num_tokens, g=g, beta=beta,
                       has_initial_state=has_initial_state)
    params = call.params(qk_l2norm=qk_l2norm, null_slot_zero=null_slot_zero, **options)
    params.bad_index_rows = call.counter(bad_index_rows)
    return params, call.out_obj


def decode(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, *, out=None, write_slot_indices=None,
           scale=0.0, qk_l2norm=True, head_map="grouped", layout="vk", null_slot_zero=False, backend="auto",
           num_threads=0, bad_index_rows=None, g=None, beta=None):
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

    bad_index_rows: checked mode (include/gdn.h, docs/errors.md). A one-element int32 tensor on
    the pool's device: the cuda kernel adds 1 for every sequence it skips because an index it
    read on the device is invalid (slot >= num_slots, ...). Zero it, run any number of calls
    (a whole CUDA graph), read it. Host backends refuse bad indices with an error instead and
    never touch it.

    g, beta: the gates precomputed (gdn 0.5; every backend, cuda since 0.5.1): g [N, HV] float32, the log-decay -exp(A_log) *
    softplus(a + dt_bias), and beta [N, HV] in the activation dtype, after the sigmoid (as FLA's
    fused_recurrent and chunk_gated_delta_rule take them). Pass both, with a, b, A_log and
    dt_bias None; each may have its own stride between rows (in elements), the head dimension
    contiguous.
    """
    if _torch_compiling():
        return _decode_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out,
                                      write_slot_indices, scale, qk_l2norm, head_map, layout, null_slot_zero, backend,
                                      num_threads, bad_index_rows, g, beta)
    params, out = _prepare(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices,
                           scale, qk_l2norm, head_map, layout, null_slot_zero, backend, num_threads, bad_index_rows,
                           g, beta)
    check(LIB.cdll.gdn_decode(ctypes.byref(params)), "gdn_decode")
    return out


def _torch_compiling():
    """Whether torch.compile (dynamo) or torch.export is tracing this call."""
    compiler = getattr(sys.modules.get("torch"), "compiler", None)
    return compiler is not None and compiler.is_compiling()


def _refuse_counter_in_torch_graph(bad_index_rows):
    """The custom operators do not take checked mode's counter: torch (2.11) cannot declare an
    optional argument as mutated when a caller leaves it out, and an undeclared write could be
    reordered by the compiler. Say so instead of dropping it silently."""
    if bad_index_rows is not None:
        raise NotImplementedError("gdn: bad_index_rows (checked mode) is not supported inside torch.compile; call "
                                  "gdn.decode eagerly (or in a CUDA graph) to use it")


def _decode_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices, scale,
                           qk_l2norm, head_map, layout, null_slot_zero, backend, num_threads, bad_index_rows, g, beta):
    """decode() as torch.compile sees it: one call of the custom operator torch.ops.gdn.decode_,
    instead of a trace of the checks above that would end at the ctypes call in a graph break.
    The operator runs decode() itself, checks included, when the compiled code runs."""
    import torch

    from . import torch_ops  # noqa: F401  registers torch.ops.gdn.decode_

    if out is None:
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _refuse_counter_in_torch_graph(bad_index_rows)
    torch.ops.gdn.decode_(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices,
                          _scale_value(scale), bool(qk_l2norm), head_map, layout, bool(null_slot_zero), backend,
                          num_threads, g, beta)
    return out


def decode_backend_for(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, *, out=None,
                       write_slot_indices=None, scale=0.0, qk_l2norm=True, head_map="grouped", layout="vk",
                       null_slot_zero=False, backend="auto", num_threads=0, g=None, beta=None):
    """The backend ("cpu", "cuda" or "reference") that decode() with these arguments would run
    on, without running it; raises what decode() would raise, except for slot index values."""
    params, _ = _prepare(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices,
                         scale, qk_l2norm, head_map, layout, null_slot_zero, backend, num_threads, g=g, beta=beta)
    chosen = ctypes.c_int()
    check(LIB.cdll.gdn_decode_backend_for(ctypes.byref(params), ctypes.byref(chosen)), "gdn_decode_backend_for")
    return Backend(chosen.value).name.lower()


def decode_tokens(q, k, v, a, b, A_log, dt_bias, state_pool, *, slot_indices=None, num_tokens=None, cu_seqlens=None,
                  token_slots=None, num_accepted=None, out=None, write_slot_indices=None, scale=0.0, qk_l2norm=True,
                  head_map="grouped", layout="vk", null_slot_zero=False, backend="auto", num_threads=0,
                  bad_index_rows=None, g=None, beta=None):
    """Multi-token decode (speculative verify, MTP; SPEC operation 2): each of N sequences applies
    its tokens in order, its state staying on chip between tokens; returns `out`.

    Activations (NumPy arrays or torch tensors, one dtype and one device for all, as gdn.decode):
      fixed T:    q, k [N, T, H, K], v [N, T, HV, V], a, b [N, T, HV]; or the same as token rows
                  [N*T, H, K], [N*T, HV, V], [N*T, HV] with num_tokens=T (row n*T + t is token t
                  of sequence n; without num_tokens token rows mean T = 1)
      varlen:     token rows q, k [R, H, K], v [R, HV, V], a, b [R, HV] (or [1, R, ...]) with
                  cu_seqlens [N+1]: sequence n owns rows cu_seqlens[n] .. cu_seqlens[n+1]-1
                  (0..num_tokens of them; num_tokens is then required: the most tokens any
                  sequence has, or more; the library cannot read device-side cu_seqlens)
      out         like v (allocated with v's shape when not given); row n*T+t / cu_seqlens[n]+t
    T is 1..16 (gdn.MAX_TOKENS). Each activation may have its own stride between token rows; in
    the [N, T, ...] form the rows must lie evenly spaced (stride(0) = T * stride(1)).
    A_log, dt_bias [HV] float32 and state_pool [slots, HV, V, K] ("vk") or [slots, HV, K, V]
    ("kv"), as gdn.decode.

    Index arrays (one dtype for all of them, int32 or int64; all on the activations' device):
      slot_indices [N]        the slot each sequence starts from (negative, or 0 with
                              null_slot_zero: a padding row, zero outputs for all its tokens)
      write_slot_indices [N]  optional: where the state after the last token goes (default the
                              read slot; negative: not saved). Not with token_slots.
      token_slots [N, W]      optional, W >= num_tokens: the state after token t goes to
                              token_slots[n, t] (negative: not saved) and nowhere else. The
                              library takes the row stride as token_slots_stride and reads whole
                              rows of that many entries.
      num_accepted [N]        optional, with token_slots: sequence n starts from the state saved
                              after token num_accepted[n]-1 of the previous step, token_slots[n,
                              num_accepted[n]-1] (1..W, or up to the row stride of a
                              wider table); slot_indices may then be None.
    A sequence with zero tokens (varlen) writes nothing. Slots written in one call must be
    distinct and not read by another sequence of the call. A snapshot is the running float32
    state rounded to the state dtype; the running state is not re-read from it.

    Options, devices, streams, CUDA graphs, errors and bad_index_rows (checked mode) as
    gdn.decode. On the host, cu_seqlens[N] is checked against the rows given; on CUDA it cannot be
    (the indices stay on the device), and the kernel skips (and in checked mode counts) sequences
    whose cu_seqlens, num_accepted or token slots are out of range.

    g, beta: the gates precomputed instead of a, b, A_log, dt_bias (which are then None), one row
    per token like a and b: g float32 log-decay, beta in the activation dtype after the sigmoid.
    cpu and reference backends (gdn 0.5); see gdn.decode. For sequences longer than 16 tokens
    (prefill, mixed batches) see gdn.forward.
    """
    if _torch_compiling():
        return _decode_tokens_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, num_tokens,
                                             cu_seqlens, token_slots, num_accepted, out, write_slot_indices, scale,
                                             qk_l2norm, head_map, layout, null_slot_zero, backend, num_threads,
                                             bad_index_rows, g, beta)
    params, out = _prepare_tokens(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, num_tokens, cu_seqlens,
                                  token_slots, num_accepted, out, write_slot_indices, scale, qk_l2norm, head_map,
                                  layout, null_slot_zero, backend, num_threads, bad_index_rows, g, beta)
    check(LIB.cdll.gdn_decode(ctypes.byref(params)), "gdn_decode")
    return out


def _decode_tokens_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, num_tokens, cu_seqlens,
                                  token_slots, num_accepted, out, write_slot_indices, scale, qk_l2norm, head_map,
                                  layout, null_slot_zero, backend, num_threads, bad_index_rows, g, beta):
    """decode_tokens() as torch.compile sees it: one call of torch.ops.gdn.decode_tokens_."""
    import torch

    _refuse_counter_in_torch_graph(bad_index_rows)
    from . import torch_ops  # noqa: F401  registers torch.ops.gdn.decode_tokens_

    if out is None:
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    torch.ops.gdn.decode_tokens_(q, k, v, a, b, A_log, dt_bias, state_pool, out, slot_indices, num_tokens,
                                 cu_seqlens, token_slots, num_accepted, write_slot_indices, _scale_value(scale),
                                 bool(qk_l2norm), head_map, layout, bool(null_slot_zero), backend, num_threads,
                                 g, beta)
    return out
