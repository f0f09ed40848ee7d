"""gdn.forward: a Gated DeltaNet layer over a varlen batch whose sequences may have any number of
tokens (prefills, decodes and verifies in one call; SPEC operation 4's interface), states in a pool.

It is gdn_decode with cu_seqlens and total_tokens (gdn 0.5): the library applies each sequence's
tokens in order, token by token or in chunks as it sees fit, starting from the state in its slot
(or from zeros where has_initial_state says so) and saving the state after its last token.
The Python checks are decode_tokens' (one _TokensCall); what differs is that cu_seqlens is
required and the longest sequence is learnt from it, not passed.
"""
import ctypes

from ._lib import LIB, WORKSPACE_FIELDS_END
from ._tensors import describe
from .decode import _is_int, _prepare_tokens, _scale_value, _torch_compiling
from .errors import check


def _longest_sequence(cu_seqlens):
    """The most tokens any sequence of cu_seqlens has (at least 1: the library takes num_tokens
    >= 1 with cu_seqlens), read from the array (on a GPU a device-to-host copy, which
    synchronises). Anything that is not a 1-D integer array of >= 2 entries gives 1 and is
    refused, with its name, by the checks of the call."""
    try:
        t = describe("cu_seqlens", cu_seqlens)
    except (TypeError, ValueError):
        return 1
    if len(t.shape) != 1 or t.shape[0] < 2 or not t.dtype_name.startswith("int"):
        return 1
    steps = cu_seqlens[1:] - cu_seqlens[:-1]
    return max(int(steps.max()), 1)


def _max_seqlen(cu_seqlens, max_seqlen):
    if max_seqlen is None:
        return _longest_sequence(cu_seqlens)
    if not _is_int(max_seqlen):
        raise TypeError(f"max_seqlen = {max_seqlen!r} is not an int")
    if max_seqlen < 1:
        raise ValueError(f"max_seqlen = {max_seqlen} must be at least 1 (the most tokens any sequence has)")
    return max_seqlen


def _prepare_forward(q, k, v, a, b, A_log, dt_bias, state_pool, cu_seqlens, slot_indices, write_slot_indices,
                     has_initial_state, out, scale, qk_l2norm, head_map, layout, null_slot_zero, backend, g, beta,
                     num_threads, max_seqlen):
    """(params, out) of a forward call, every Python-side check done."""
    if cu_seqlens is None:
        raise TypeError("cu_seqlens is required: [N + 1] int32 or int64, sequence n owns token rows cu_seqlens[n] .. "
                        "cu_seqlens[n+1]-1 (N sequences of T tokens each: arange(N + 1) * T)")
    if slot_indices is None:
        raise TypeError("slot_indices is required: [N], the slot each sequence starts from (negative: padding)")
    tokens = _max_seqlen(cu_seqlens, max_seqlen)
    return _prepare_tokens(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, tokens, cu_seqlens, None, None,
                           out, write_slot_indices, scale, qk_l2norm, head_map, layout, null_slot_zero, backend,
                           num_threads, g=g, beta=beta, has_initial_state=has_initial_state)


def forward(q, k, v, a, b, A_log, dt_bias, state_pool, *, cu_seqlens, slot_indices, write_slot_indices=None,
            has_initial_state=None, out=None, scale=0.0, qk_l2norm=True, head_map="grouped", layout="vk",
            backend="auto", g=None, beta=None, num_threads=0, null_slot_zero=False, max_seqlen=None):
    """A Gated DeltaNet layer over N sequences of any lengths (prefill, decode, verify, mixed);
    returns `out`.

    Activations: token rows of all sequences one after another (NumPy arrays or torch tensors,
    one device for all; R = total_tokens):
      q, k        [R, H, K]    activation dtype
      v           [R, HV, V]   activation dtype
      a, b        [R, HV]      activation dtype: raw gate input and beta logit (with A_log,
                               dt_bias [HV] float32), or None with g and beta:
      g           [R, HV]      float32: the log-decay, -exp(A_log) * softplus(a + dt_bias)
      beta        [R, HV]      activation dtype: beta after the sigmoid, sigmoid(b)
      out         [R, HV, V]   activation dtype; allocated like v when not given
    Each may also be given as [1, R, ...] (FLA's varlen form). Each may have its own stride
    between token rows; the dimensions after the first must be contiguous.
      state_pool  [slots, HV, V, K] (layout "vk") or [slots, HV, K, V] ("kv"), updated in place
      cu_seqlens  [N + 1] int32/int64 (required): sequence n owns rows cu_seqlens[n] ..
                  cu_seqlens[n+1]-1; non-decreasing, cu_seqlens[N] <= R; a sequence may have no
                  tokens (it writes nothing)
      slot_indices [N] (required, the dtype of cu_seqlens): the slot sequence n starts from and
                  saves its final state to. Negative (or 0 with null_slot_zero=True): a padding
                  row, all its output rows are zeros and no state is read or written.
      write_slot_indices [N] optional: the final state goes there instead (negative: not saved).
      has_initial_state [N] optional, bool or uint8: 0 = sequence n starts from a zero state,
                  its read slot is not read (vLLM's and FLA's name); its final state is still
                  saved. None = every sequence starts from its slot.
    Slots written in one call must be distinct and not read by another sequence of the call.

    The math is gdn.decode's, token after token within each sequence; the cpu backend runs long
    sequences in chunks of tokens (float32), the reference backend token by token in float64.
    scale (None or 0 = 1/sqrt(K)), qk_l2norm, head_map, layout, backend, num_threads and
    null_slot_zero are gdn.decode's options; dtypes are gdn.decode's (float64 with
    backend="reference").

    max_seqlen: the most tokens any sequence has (an upper bound is enough; gdn's num_tokens).
    None: read from cu_seqlens, which on a GPU is a device-to-host copy (a synchronisation,
    not allowed while capturing a CUDA graph): pass it there.

    Backends: every backend takes g/beta and has_initial_state (cuda since gdn 0.5.1) and
    sequences of any length. On cuda (gdn 0.6) sequences of more than 16 tokens run in chunks on
    tensor cores, for layout "vk" with K = 128 (other shapes: gdn.GdnArgumentError with the
    library's message); with bf16 activations the chunked products are one bf16 term each (FLA's
    and FlashInfer's accuracy, ~1e-3), with f16/f32 activations or GDN_PREFILL_PRECISE=1 three.
    With torch tensors on cuda (gdn 0.7) the call also takes a workspace from torch's allocator
    (gdn_decode_workspace_size: ~19.3 KiB per 64 tokens and value head, 9.4 MiB per 1000 tokens of
    qwen3-next), on the current stream, so that the chunk-local work of all chunks runs at once.

    Errors: TypeError/ValueError for what is refused here (shapes, dtypes, devices, a missing
    cu_seqlens, both or neither gate form), gdn.GdnError subclasses with the library's message
    for what the library refuses (slot out of range, decreasing cu_seqlens, ...). Whatever is
    raised, nothing was written: the pool and out are as they were.

    Under torch.compile it becomes one call of the custom operator torch.ops.gdn.forward_
    (gdn.torch_ops), which runs this function when the compiled code runs.
    """
    if _torch_compiling():
        return _forward_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, cu_seqlens, slot_indices,
                                       write_slot_indices, has_initial_state, out, scale, qk_l2norm, head_map, layout,
                                       backend, g, beta, num_threads, null_slot_zero, max_seqlen)
    params, out = _prepare_forward(q, k, v, a, b, A_log, dt_bias, state_pool, cu_seqlens, slot_indices,
                                   write_slot_indices, has_initial_state, out, scale, qk_l2norm, head_map, layout,
                                   null_slot_zero, backend, g, beta, num_threads, max_seqlen)
    workspace = _attach_workspace(params, state_pool)
    check(LIB.cdll.gdn_decode(ctypes.byref(params)), "gdn_decode")
    del workspace  # (freed in the order of torch's current stream, which the kernels run on)
    return out


def _attach_workspace(params, state_pool):
    """The cuda backend's workspace for this call (gdn 0.7: the chunked prefill's faster path), as
    a torch uint8 tensor from torch's allocator on the pool's device, or None where the call uses
    none. Allocated on torch's current stream, the stream the call is enqueued on, so the memory
    goes back to the allocator only after the kernels that use it (and inside a CUDA graph
    capture it comes from the graph's pool)."""
    if LIB.params_size < WORKSPACE_FIELDS_END or not hasattr(LIB.cdll, "gdn_decode_workspace_size"):
        return None
    if type(state_pool).__module__.split(".")[0] != "torch" or not state_pool.is_cuda:
        return None
    size = ctypes.c_size_t(0)
    check(LIB.cdll.gdn_decode_workspace_size(ctypes.byref(params), ctypes.byref(size)), "gdn_decode_workspace_size")
    if size.value == 0:
        return None
    import torch
    workspace = torch.empty(size.value, dtype=torch.uint8, device=state_pool.device)
    params.workspace, params.workspace_bytes = workspace.data_ptr(), size.value
    return workspace


def _forward_in_torch_graph(q, k, v, a, b, A_log, dt_bias, state_pool, cu_seqlens, slot_indices, write_slot_indices,
                            has_initial_state, out, scale, qk_l2norm, head_map, layout, backend, g, beta, num_threads,
                            null_slot_zero, max_seqlen):
    """forward() as torch.compile sees it: one call of torch.ops.gdn.forward_."""
    import torch

    from . import torch_ops  # noqa: F401  registers torch.ops.gdn.forward_

    if out is None:
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    torch.ops.gdn.forward_(q, k, v, a, b, A_log, dt_bias, state_pool, out, cu_seqlens, slot_indices,
                           write_slot_indices, has_initial_state, g, beta, max_seqlen, _scale_value(scale),
                           bool(qk_l2norm), head_map, layout, bool(null_slot_zero), backend, num_threads)
    return out
