"""Drop-in wrappers with the call signatures engines use today, running gdn.decode underneath.

    fused_recurrent_gated_delta_rule            FLA (fla.ops.gated_delta_rule) and vLLM's copy
    fused_recurrent_gated_delta_rule_packed_decode   vLLM (packed q|k|v projection)
    fused_sigmoid_gating_delta_rule_update      SGLang (gate and beta sigmoid in the kernel)
    gated_delta_rule_decode_pretranspose        FlashInfer (flashinfer.gdn_decode)

They take torch tensors, as the originals do, and serve what gdn computes: one token per
sequence, the gate g = -exp(A_log) * softplus(a + dt_bias) and beta = sigmoid(b) computed in the
kernel from raw a and b. Anything else (T > 1, precomputed g or beta, per-channel gates...)
raises NotImplementedError saying why, never a silently different result. Where behaviour
differs from the original (padding rows above all) python/README.md says so.
"""
import sys

from .decode import decode

_GATE_NOTE = ("gdn computes the gate g = -exp(A_log) * softplus(a + dt_bias) and beta = sigmoid(b) inside the "
              "kernel from the raw projections a and b")


def _torch_tensor(x, name):
    """x, checked to be a torch tensor (the wrappers mirror torch APIs)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: gdn.compat wrappers take torch tensors, like the functions they replace; "
                        f"got {type(x).__name__} (gdn.decode takes NumPy arrays too)")
    return x


def _gate_param(x, name, num_v_heads, like):
    """A float32 contiguous [HV] copy of a gate parameter when it is not one already (engines
    keep dt_bias in bf16; gdn reads float32); zeros for a missing dt_bias."""
    import torch

    if x is None:
        return torch.zeros(num_v_heads, dtype=torch.float32, device=like.device)
    _torch_tensor(x, name)
    return x.reshape(-1).to(torch.float32).contiguous()


def _one_token_per_sequence(who, q, cu_seqlens):
    """The number of sequences of a [B, T, ...] or varlen [1, total, ...] batch that has one
    token per sequence; NotImplementedError otherwise.

    Device-resident cu_seqlens are not read (that would synchronise with the GPU and break CUDA
    graph capture): a varlen batch with as many tokens as sequences is taken to be arange(N+1)."""
    if q.dim() != 4:
        raise ValueError(f"{who}: q has shape {tuple(q.shape)}, expected [B, T, H, K]")
    if cu_seqlens is None:
        batch, tokens = q.shape[0], q.shape[1]
        if tokens != 1:
            raise NotImplementedError(f"{who}: {tokens} tokens per sequence; gdn serves one token per sequence "
                                      "(decode) until multi-token decode lands in the Python binding")
        return batch
    _torch_tensor(cu_seqlens, "cu_seqlens")
    if q.shape[0] != 1:
        raise ValueError(f"{who}: with cu_seqlens the batch dimension must be 1 (flattened tokens), got {q.shape[0]}")
    sequences, total = cu_seqlens.numel() - 1, q.shape[1]
    if total != sequences:
        raise NotImplementedError(f"{who}: {total} tokens for {sequences} sequences; gdn serves one token per "
                                  "sequence (decode) until multi-token decode lands in the Python binding")
    if cu_seqlens.device.type == "cpu":
        import torch

        if not torch.equal(cu_seqlens.to(torch.int64), torch.arange(sequences + 1, dtype=torch.int64)):
            raise NotImplementedError(f"{who}: cu_seqlens = {cu_seqlens.tolist()} is not one token per sequence")
    return sequences


def _rows(x, varlen):
    """The per-sequence rows of a [N, 1, ...] batch or of a varlen [1, N, ...] one, as [N, ...]."""
    return x[0] if varlen else x[:, 0]


def _gate_rows(x, varlen):
    """Rows of a gate input (a, b, g, beta): [B, T, HV] like q, or already [tokens, HV]."""
    return x if x.dim() == 2 else _rows(x, varlen)


def _refuse(condition, who, what):
    if condition:
        raise NotImplementedError(f"{who}: {what}")


def _required(x, who, name):
    if x is None:
        raise TypeError(f"{who}: {name} is required")
    return x


def _slot_column(indices):
    """ssm_state_indices as the [N] slots gdn reads: the first column of a [N, T] table (the
    slot of token 0, which is where a one-token step reads and writes)."""
    if indices.dim() == 2:
        indices = indices[:, 0]
    return indices.contiguous()


def _state_layout(state_v_first, transpose_state_layout, vllm_pool):
    """'vk' for state_v_first=True (FLA; transpose_state_layout is its older name), 'kv' for
    False; unset, FLA's default 'kv', or vLLM's [slots, HV, V, K] ('vk') for a vLLM pool call."""
    if state_v_first is not None and transpose_state_layout is not None:
        raise ValueError("pass state_v_first or its deprecated name transpose_state_layout, not both")
    flag = state_v_first if state_v_first is not None else transpose_state_layout
    if flag is None:
        return "vk" if vllm_pool else "kv"
    return "vk" if flag else "kv"


def _fla_gate_inputs(who, g, beta, a, b, use_gate_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval, gk, gv):
    """(a, b): the raw gate input and beta logit FLA passes under its in-kernel flags (or gdn's
    own keywords a=, b=); NotImplementedError for the forms gdn cannot take."""
    _refuse(gk is not None or gv is not None, who, "per-channel gates gk/gv are not GDN decode; gdn has the "
            "scalar per-head gate only")
    _refuse(allow_neg_eigval, who, "allow_neg_eigval (beta = 2 * sigmoid(b)) is not implemented by gdn")
    if a is not None and g is not None:
        raise TypeError(f"{who}: pass the raw gate as a= or as g= with use_gate_in_kernel=True, not both")
    if b is not None and beta is not None:
        raise TypeError(f"{who}: pass the beta logit as b= or as beta= with use_beta_sigmoid_in_kernel=True, not both")
    if a is None:
        _refuse(g is None, who, f"no gate (g=None); {_GATE_NOTE}: pass the raw gate input with "
                "use_gate_in_kernel=True, A_log= and dt_bias=")
        _refuse(not use_gate_in_kernel, who, f"a precomputed g cannot be taken: {_GATE_NOTE}; pass the raw gate "
                "input as g with use_gate_in_kernel=True, A_log= and dt_bias= (or as a=)")
        a = g
    if b is None:
        _refuse(beta is None, who, f"no beta (beta=None means beta = 1); {_GATE_NOTE}: pass the beta logit "
                "with use_beta_sigmoid_in_kernel=True")
        _refuse(not use_beta_sigmoid_in_kernel, who, f"a precomputed beta cannot be taken: {_GATE_NOTE}; pass the "
                "beta logit as beta with use_beta_sigmoid_in_kernel=True (or as b=)")
        b = beta
    return a, b


def fused_recurrent_gated_delta_rule(q, k, v, g=None, beta=None, scale=None, initial_state=None, *,
                                     output_final_state=False, inplace_final_state=None,
                                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, ssm_state_indices=None,
                                     num_accepted_tokens=None, use_gate_in_kernel=False, A_log=None,
                                     dt_bias=None, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                                     state_v_first=None, transpose_state_layout=None, gk=None, gv=None,
                                     a=None, b=None, head_first=False, null_slot_zero=False):
    """FLA's fused_recurrent_gated_delta_rule (and vLLM's copy of it) for one token per sequence.

    q, k [B, 1, H, K], v [B, 1, HV, V] (or varlen [1, N, ...] with cu_seqlens = arange(N+1)).
    The gate must be the in-kernel form: g = raw gate input with use_gate_in_kernel=True,
    A_log [HV], dt_bias [HV] (optional), and beta = beta logit with use_beta_sigmoid_in_kernel
    =True (or gdn's names a= and b=).

    State, as FLA does it (no ssm_state_indices): initial_state [N, HV, K, V] (None = zeros),
    or [N, HV, V, K] with state_v_first=True (older FLA: transpose_state_layout=True), is left
    unchanged; output_final_state=True returns the new state as a new float32 tensor, else None.
    With inplace_final_state=True the new state overwrites initial_state instead.
    As vLLM does it (ssm_state_indices [N], or [N, T] whose first column is used): initial_state
    is the pool [slots, HV, V, K] (vLLM's layout; state_v_first=False for a [slots, HV, K, V]
    pool), updated in place at those slots; negative slots are padding rows (zero output), and
    slot 0 too with null_slot_zero=True (vLLM's NULL_BLOCK_ID = 0, where the vLLM version has it).
    Returns (o [like v], final_state). Positional order is vLLM's (q, k, v, g, beta, scale,
    initial_state); the other arguments are keyword-only here (FLA's 5th positional is gk).
    """
    import torch

    who = "fused_recurrent_gated_delta_rule"
    for name, x in (("q", q), ("k", k), ("v", v)):
        _torch_tensor(x, name)
    _refuse(head_first, who, "head_first=True (removed from FLA) is not supported")
    _refuse(num_accepted_tokens is not None, who, "num_accepted_tokens (speculative decoding) needs multi-token "
            "decode, which the Python binding does not serve yet")
    a, b = _fla_gate_inputs(who, g, beta, a, b, use_gate_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                            gk, gv)
    vllm_pool = ssm_state_indices is not None or bool(inplace_final_state)
    layout = _state_layout(state_v_first, transpose_state_layout, vllm_pool)
    num_seqs = _one_token_per_sequence(who, q, cu_seqlens)
    varlen = cu_seqlens is not None
    num_v_heads, head_v = v.shape[2], v.shape[3]
    A_log = _gate_param(_required(A_log, who, "A_log"), "A_log", num_v_heads, q)
    dt_bias = _gate_param(dt_bias, "dt_bias", num_v_heads, q)
    rows = dict(q=_rows(q, varlen), k=_rows(k, varlen), v=_rows(v, varlen), a=_gate_rows(_torch_tensor(a, "a"), varlen),
                b=_gate_rows(_torch_tensor(b, "b"), varlen))
    options = dict(A_log=A_log, dt_bias=dt_bias, scale=scale, qk_l2norm=use_qk_l2norm_in_kernel, layout=layout)

    def finish(out):
        return out.unsqueeze(0) if varlen else out.unsqueeze(1)

    if vllm_pool:
        # vLLM: initial_state is updated in place, at the given slots or at sequence n's row.
        _refuse(inplace_final_state is False, who, "inplace_final_state=False with ssm_state_indices writes "
                "per-token states (multi-token decode), which the Python binding does not serve yet")
        pool = _torch_tensor(_required(initial_state, who, "initial_state"), "initial_state")
        slots = (_slot_column(_torch_tensor(ssm_state_indices, "ssm_state_indices"))
                 if ssm_state_indices is not None else torch.arange(num_seqs, device=q.device))
        return finish(decode(state_pool=pool, slot_indices=slots, null_slot_zero=null_slot_zero, **rows,
                             **options)), pool

    # FLA: the initial state is an input; the final state, if asked for, is a new float32 tensor.
    if initial_state is not None and _torch_tensor(initial_state, "initial_state").shape[0] != num_seqs:
        raise ValueError(f"{who}: initial_state has {initial_state.shape[0]} states for {num_seqs} sequences")
    if initial_state is None:
        head_k = q.shape[3]
        row = (head_v, head_k) if layout == "vk" else (head_k, head_v)
        initial_state = torch.zeros((num_seqs, num_v_heads) + row, dtype=torch.float32, device=q.device)
    slots = torch.arange(num_seqs, device=q.device)
    if output_final_state:
        final_state = initial_state.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
        return finish(decode(state_pool=final_state, slot_indices=slots, **rows, **options)), final_state
    nowhere = torch.full_like(slots, -1)  # compute the outputs, save no state
    out = decode(state_pool=initial_state.contiguous(), slot_indices=slots, write_slot_indices=nowhere, **rows,
                 **options)
    return finish(out), None


def _split_packed(mixed_qkv, num_q_heads, head_k, num_v_heads, head_v):
    """Views q [N, H, K], k [N, H, K], v [N, HV, V] into the rows of a packed q|k|v projection."""
    qk = num_q_heads * head_k
    q = mixed_qkv[:, :qk].unflatten(1, (num_q_heads, head_k))
    k = mixed_qkv[:, qk:2 * qk].unflatten(1, (num_q_heads, head_k))
    v = mixed_qkv[:, 2 * qk:].unflatten(1, (num_v_heads, head_v))
    return q, k, v


def fused_recurrent_gated_delta_rule_packed_decode(mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out,
                                                   ssm_state_indices, use_qk_l2norm_in_kernel=False, *,
                                                   null_slot_zero=False):
    """vLLM's packed decode: mixed_qkv [N, 2*H*K + HV*V] (rows may be strided), a, b [N, HV],
    initial_state the pool [slots, HV, V, K] updated in place at ssm_state_indices [N] (negative:
    padding row, zero output; slot 0 too with null_slot_zero=True, as vLLM versions with
    NULL_BLOCK_ID = 0 do), out [N, 1, HV, V]. Returns (out, initial_state)."""
    who = "fused_recurrent_gated_delta_rule_packed_decode"
    for name, x in (("mixed_qkv", mixed_qkv), ("initial_state", initial_state), ("out", out)):
        _torch_tensor(x, name)
    if mixed_qkv.dim() != 2 or initial_state.dim() != 4:
        raise ValueError(f"{who}: mixed_qkv must be [N, 2*H*K + HV*V] and initial_state [slots, HV, V, K]; got "
                         f"{tuple(mixed_qkv.shape)} and {tuple(initial_state.shape)}")
    num_v_heads, head_v, head_k = initial_state.shape[1:]
    qk_width = mixed_qkv.shape[1] - num_v_heads * head_v
    if qk_width <= 0 or qk_width % (2 * head_k):
        raise ValueError(f"{who}: mixed_qkv width {mixed_qkv.shape[1]} is not 2*H*K + HV*V with HV={num_v_heads}, "
                         f"V={head_v}, K={head_k}")
    q, k, v = _split_packed(mixed_qkv, qk_width // (2 * head_k), head_k, num_v_heads, head_v)
    decode(q, k, v, a, b, _gate_param(A_log, "A_log", num_v_heads, mixed_qkv),
           _gate_param(dt_bias, "dt_bias", num_v_heads, mixed_qkv), initial_state,
           _slot_column(_torch_tensor(ssm_state_indices, "ssm_state_indices")), out=out, scale=scale,
           qk_l2norm=use_qk_l2norm_in_kernel, layout="vk", null_slot_zero=null_slot_zero)
    return out, initial_state


def fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b,
                                           initial_state_source, initial_state_indices, scale=None,
                                           use_qk_l2norm_in_kernel=False, cu_seqlens=None, is_kda=False,
                                           disable_state_update=False, intermediate_states_buffer=None,
                                           intermediate_state_indices=None, cache_steps=None,
                                           retrieve_parent_token=None):
    """SGLang's decode kernel: q, k [B, 1, H, K] / v [B, 1, HV, V] (or varlen [1, N, ...] with
    cu_seqlens = arange(N+1)); a, b [B, 1, HV] or [N, HV]; pool initial_state_source
    [slots, HV, V, K] updated in place at initial_state_indices [N]. Returns o (shape of v).

    Differs from SGLang on padding: a negative index gives a zero output row here, where
    SGLang computes that row from a zero state."""
    who = "fused_sigmoid_gating_delta_rule_update"
    for name, x in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b)):
        _torch_tensor(x, name)
    _refuse(float(softplus_beta) != 1.0 or float(softplus_threshold) != 20.0, who,
            f"softplus_beta = {softplus_beta}, softplus_threshold = {softplus_threshold}: gdn's softplus has "
            "beta 1 and threshold 20")
    _refuse(is_kda, who, "is_kda=True (per-channel KDA gate) is not GDN")
    _refuse(disable_state_update or intermediate_states_buffer is not None or retrieve_parent_token is not None,
            who, "target verify (disable_state_update, intermediate states, tree attention) needs multi-token "
            "decode, which the Python binding does not serve yet")
    _one_token_per_sequence(who, q, cu_seqlens)
    varlen = cu_seqlens is not None
    num_v_heads = v.shape[2]
    out = decode(_rows(q, varlen), _rows(k, varlen), _rows(v, varlen), _gate_rows(a, varlen), _gate_rows(b, varlen),
                 _gate_param(A_log, "A_log", num_v_heads, q), _gate_param(dt_bias, "dt_bias", num_v_heads, q),
                 initial_state_source, _slot_column(initial_state_indices), scale=scale,
                 qk_l2norm=use_qk_l2norm_in_kernel, layout="vk")
    return out.unsqueeze(0) if varlen else out.unsqueeze(1)


def gated_delta_rule_decode_pretranspose(q, k, v, state, A_log, a, dt_bias, b, scale=None, output=None,
                                         use_qk_l2norm=True, initial_state=None, initial_state_indices=None,
                                         output_state_indices=None, *, intermediate_states_buffer=None,
                                         disable_state_update=False):
    """FlashInfer's gated_delta_rule_decode_pretranspose for T = 1: q, k [B, 1, H, K],
    v [B, 1, HV, V], a, b [B, 1, HV], A_log [HV] float32, dt_bias [HV] (float32 or bf16).

    State in the v-major layout [.., HV, V, K], updated in place, either per batch entry
    (state [B, HV, V, K]) or in a pool (initial_state [slots, HV, V, K] with
    initial_state_indices [B] and optional output_state_indices [B]). Returns (output, state or
    initial_state); output [B, 1, HV, V] in q's dtype, or written into `output`.
    Differs from FlashInfer on padding: index -1 gives a zero output row and leaves the pool
    untouched on every dtype (FlashInfer's bf16 path redirects it to slot 0)."""
    import torch

    who = "gated_delta_rule_decode_pretranspose"
    for name, x in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b)):
        _torch_tensor(x, name)
    batch, tokens = q.shape[0], q.shape[1]
    _refuse(tokens != 1, who, f"T = {tokens}: multi-token decode (MTP) is not served by the Python binding yet")
    if intermediate_states_buffer is not None or disable_state_update:
        raise ValueError(f"{who}: intermediate_states_buffer and disable_state_update are for T > 1 only")
    if (initial_state is None) != (initial_state_indices is None):
        raise ValueError(f"{who}: initial_state and initial_state_indices must be given together")
    if output_state_indices is not None and initial_state is None:
        raise ValueError(f"{who}: output_state_indices needs initial_state (pool mode)")
    num_v_heads = v.shape[2]
    if initial_state is not None:
        pool, slots, returned = initial_state, _slot_column(initial_state_indices), initial_state
    else:
        returned = _torch_tensor(_required(state, who, "state (or initial_state)"), "state")
        pool = state.contiguous()  # a strided state is updated through a copy, as FlashInfer does
        slots = torch.arange(batch, device=q.device)
    write_slots = None if output_state_indices is None else output_state_indices.to(slots.dtype).contiguous()
    direct = output if output is not None and output.dtype == q.dtype else None
    out = decode(q, k, v, a, b, _gate_param(A_log, "A_log", num_v_heads, q),
                 _gate_param(dt_bias, "dt_bias", num_v_heads, q), pool, slots, out=direct,
                 write_slot_indices=write_slots, scale=scale, qk_l2norm=use_qk_l2norm, layout="vk")
    if pool is not returned:
        returned.copy_(pool)
    if output is not None and direct is None:
        output.copy_(out)  # FlashInfer casts into an output of another dtype
        out = output
    return out, returned
