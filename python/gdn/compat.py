"""Drop-in wrappers with the call signatures engines use today, running gdn.decode_tokens underneath.

    fused_recurrent_gated_delta_rule            FLA (fla.ops.gated_delta_rule) and vLLM's copy
    fused_recurrent_gated_delta_rule_packed_decode   vLLM (packed q|k|v projection)
    fused_sigmoid_gating_delta_rule_update      SGLang (gate and beta sigmoid in the kernel)
    gated_delta_rule_decode_pretranspose        FlashInfer (flashinfer.gdn_decode)

They take torch tensors, as the originals do, and serve what gdn computes: 1..16 tokens per
sequence (decode, speculative verify, MTP; fixed T or varlen cu_seqlens), per-token state
snapshots where the original writes them into the pool (vLLM's 2-D ssm_state_indices with
num_accepted_tokens), and the gate g = -exp(A_log) * softplus(a + dt_bias) and beta = sigmoid(b)
computed in the kernel from raw a and b. Anything else (more than 16 tokens, precomputed g or
beta, per-channel gates, tree verify, per-token states in a buffer apart from the pool...) raises
NotImplementedError saying why, never a silently different result. Where behaviour differs from
the original (padding rows above all) python/README.md says so.
"""
import sys

from ._lib import MAX_TOKENS
from .decode import decode, decode_tokens

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


def _check_max_tokens(who, tokens):
    if tokens > MAX_TOKENS:
        raise NotImplementedError(f"{who}: {tokens} tokens per sequence; gdn applies at most {MAX_TOKENS} per call "
                                  "(GDN_MAX_TOKENS): decode and speculative verify, not prefill")


def _tokens_per_sequence(who, q, cu_seqlens, table_width=None):
    """(N, T) of a [B, T, ...] batch, or of a varlen [1, R, ...] one with cu_seqlens [N + 1]; for
    varlen, T is a bound on the tokens of any sequence (what gdn's num_tokens takes).

    cu_seqlens on the CPU is read (T exact). On a GPU it is not read where that can be avoided
    (reading synchronises and breaks CUDA graph capture): T is then the width of a 2-D
    ssm_state_indices table (one column per token), else 1 when there are as many rows as
    sequences (a decode batch: cu_seqlens taken to be arange(N + 1); the kernel skips a sequence
    with more tokens), else the row count when that is at most 16, else read from the device."""
    if q.dim() != 4:
        raise ValueError(f"{who}: q has shape {tuple(q.shape)}, expected [B, T, H, K]")
    if cu_seqlens is None:
        batch, tokens = q.shape[0], q.shape[1]
        _check_max_tokens(who, tokens)
        return batch, tokens
    _torch_tensor(cu_seqlens, "cu_seqlens")
    if q.shape[0] != 1:
        raise ValueError(f"{who}: with cu_seqlens the batch dimension must be 1 (flattened tokens), got {q.shape[0]}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"{who}: cu_seqlens has shape {tuple(cu_seqlens.shape)}, expected [N + 1]")
    sequences, rows = cu_seqlens.numel() - 1, q.shape[1]
    if cu_seqlens.device.type == "cpu" or (table_width is None and rows != sequences and rows > MAX_TOKENS):
        counts = cu_seqlens[1:] - cu_seqlens[:-1]
        tokens = int(counts.max()) if sequences else 1
    elif table_width is not None:
        tokens = table_width
    elif rows == sequences:
        tokens = 1
    else:
        tokens = rows
    tokens = max(tokens, 1)
    _check_max_tokens(who, tokens)
    return sequences, tokens


def _token_rows(x, varlen):
    """An activation as decode_tokens takes it: [B, T, ...] as it is, varlen [1, R, ...] as rows [R, ...]."""
    return x[0] if varlen else x


def _gate_tokens(x, varlen):
    """A gate input (a, b, g, beta): [B, T, HV] like q, or already token rows [tokens, HV]."""
    return x if x.dim() == 2 else _token_rows(x, varlen)


def _index_as(x, dtype, name):
    """An index tensor in the dtype the call's other index arrays have (gdn takes one index dtype
    per call), contiguous; other dtypes are left for decode_tokens to refuse."""
    if x is None:
        return None
    import torch

    _torch_tensor(x, name)
    if x.dtype in (torch.int32, torch.int64) and x.dtype != dtype:
        x = x.to(dtype)
    return x.contiguous()


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
                                     num_accepted_tokens=None, retrieve_parent_token=None, use_gate_in_kernel=False,
                                     A_log=None, dt_bias=None, use_beta_sigmoid_in_kernel=False,
                                     allow_neg_eigval=False, state_v_first=None, transpose_state_layout=None, gk=None,
                                     gv=None, a=None, b=None, head_first=False, null_slot_zero=False):
    """FLA's fused_recurrent_gated_delta_rule (and vLLM's copy of it), 1..16 tokens per sequence.

    q, k [B, T, H, K], v [B, T, HV, V], or varlen [1, R, ...] with cu_seqlens [N + 1].
    The gate must be the in-kernel form: g = raw gate input with use_gate_in_kernel=True,
    A_log [HV], dt_bias [HV] (optional), and beta = beta logit with use_beta_sigmoid_in_kernel
    =True (or gdn's names a= and b=), [B, T, HV] like q (or token rows [tokens, HV]).

    State, as FLA does it (no ssm_state_indices): initial_state [N, HV, K, V] (None = zeros),
    or [N, HV, V, K] with state_v_first=True (older FLA: transpose_state_layout=True), is left
    unchanged; output_final_state=True returns the state after each sequence's last token as a
    new float32 tensor, else None. With inplace_final_state=True that state overwrites
    initial_state instead.
    As vLLM does it: initial_state is the pool [slots, HV, V, K] (vLLM's layout; state_v_first=
    False for a [slots, HV, K, V] pool), updated in place. ssm_state_indices [N] gives each
    sequence's slot (one token per sequence); a 2-D [N, W] table gives one slot per token: the
    sequence starts from column 0, or from column num_accepted_tokens[n] - 1 (speculative
    decoding), and the state after token t goes to column t. Negative slots are padding rows
    (zero output) or unsaved states, and slot 0 too with null_slot_zero=True (vLLM's
    NULL_BLOCK_ID = 0, where the vLLM version has it).
    Returns (o [like v], final_state). Positional order is vLLM's (q, k, v, g, beta, scale,
    initial_state); the other arguments are keyword-only here (FLA's 5th positional is gk).
    """
    import torch

    who = "fused_recurrent_gated_delta_rule"
    for name, x in (("q", q), ("k", k), ("v", v)):
        _torch_tensor(x, name)
    _refuse(head_first, who, "head_first=True (removed from FLA) is not supported")
    _refuse(retrieve_parent_token is not None, who, "retrieve_parent_token (EAGLE tree verify: a token starts from "
            "its parent's state) is not served: gdn applies a sequence's tokens as one chain")
    a, b = _fla_gate_inputs(who, g, beta, a, b, use_gate_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                            gk, gv)
    vllm_pool = ssm_state_indices is not None or bool(inplace_final_state)
    layout = _state_layout(state_v_first, transpose_state_layout, vllm_pool)
    table = ssm_state_indices if ssm_state_indices is not None and ssm_state_indices.dim() == 2 else None
    _refuse(num_accepted_tokens is not None and table is None, who, "num_accepted_tokens selects the start state "
            "from a 2-D ssm_state_indices [N, T] table (vLLM's speculative decoding); pass one")
    num_seqs, tokens = _tokens_per_sequence(who, q, cu_seqlens, None if table is None else table.shape[1])
    varlen = cu_seqlens is not None
    num_v_heads, head_v = v.shape[2], v.shape[3]
    A_log = _gate_param(_required(A_log, who, "A_log"), "A_log", num_v_heads, q)
    dt_bias = _gate_param(dt_bias, "dt_bias", num_v_heads, q)
    acts = dict(q=_token_rows(q, varlen), k=_token_rows(k, varlen), v=_token_rows(v, varlen),
                a=_gate_tokens(_torch_tensor(a, "a"), varlen), b=_gate_tokens(_torch_tensor(b, "b"), varlen))
    options = dict(A_log=A_log, dt_bias=dt_bias, scale=scale, qk_l2norm=use_qk_l2norm_in_kernel, layout=layout,
                   num_tokens=tokens)
    if ssm_state_indices is not None:
        index_dtype = _torch_tensor(ssm_state_indices, "ssm_state_indices").dtype
    else:
        index_dtype = cu_seqlens.dtype if varlen else torch.int64
    if varlen:
        options["cu_seqlens"] = _index_as(cu_seqlens, index_dtype, "cu_seqlens")

    def finish(out):
        return out.unsqueeze(0) if varlen else out

    def sequence_rows():
        return torch.arange(num_seqs, device=q.device, dtype=index_dtype)

    if vllm_pool:
        # vLLM: initial_state is updated in place, at the given slots or at sequence n's row.
        _refuse(inplace_final_state is False, who, "inplace_final_state=False with ssm_state_indices returns every "
                "token's state in a new [tokens, HV, K, V] tensor apart from the pool, which gdn does not produce")
        pool = _torch_tensor(_required(initial_state, who, "initial_state"), "initial_state")
        pool_options = dict(state_pool=pool, null_slot_zero=null_slot_zero, **acts, **options)
        if ssm_state_indices is None:
            return finish(decode_tokens(slot_indices=sequence_rows(), **pool_options)), pool
        if table is None:
            if ssm_state_indices.dim() != 1:
                raise ValueError(f"{who}: ssm_state_indices has shape {tuple(ssm_state_indices.shape)}, expected "
                                 "[N] or [N, T]")
            _refuse(tokens > 1, who, f"{tokens} tokens per sequence with a 1-D ssm_state_indices: vLLM would store "
                    "the state after token t at ssm_state_indices[n + t] (another sequence's slot); pass a 2-D "
                    "[N, T] table, one slot per token")
            return finish(decode_tokens(slot_indices=ssm_state_indices.contiguous(), **pool_options)), pool
        if num_accepted_tokens is None and tokens == 1:
            # One token per sequence: vLLM reads and writes column 0 only (other columns unused).
            return finish(decode_tokens(slot_indices=_slot_column(table), **pool_options)), pool
        accepted = _index_as(num_accepted_tokens, index_dtype, "num_accepted_tokens")
        read = _slot_column(table) if accepted is None else None
        return finish(decode_tokens(slot_indices=read, token_slots=table, num_accepted=accepted,
                                    **pool_options)), pool

    # FLA: the initial state is an input; the final state, if asked for, is a new float32 tensor.
    if initial_state is not None and _torch_tensor(initial_state, "initial_state").shape[0] != num_seqs:
        raise ValueError(f"{who}: initial_state has {initial_state.shape[0]} states for {num_seqs} sequences")
    if initial_state is None:
        head_k = q.shape[3]
        row = (head_v, head_k) if layout == "vk" else (head_k, head_v)
        initial_state = torch.zeros((num_seqs, num_v_heads) + row, dtype=torch.float32, device=q.device)
    slots = sequence_rows()
    if output_final_state:
        final_state = initial_state.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
        return finish(decode_tokens(state_pool=final_state, slot_indices=slots, **acts, **options)), final_state
    nowhere = torch.full_like(slots, -1)  # compute the outputs, save no state
    out = decode_tokens(state_pool=initial_state.contiguous(), slot_indices=slots, write_slot_indices=nowhere, **acts,
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
    """SGLang's decode kernel: q, k [B, T, H, K] / v [B, T, HV, V] (or varlen [1, R, ...] with
    cu_seqlens [N + 1]), 1..16 tokens per sequence; a, b [B, T, HV] or token rows [tokens, HV];
    pool initial_state_source [slots, HV, V, K]: sequence n starts from slot
    initial_state_indices[n] and its state after its last token is written back there, unless
    disable_state_update=True (target verify without the write-back). Returns o (shape of v).

    Differs from SGLang on padding: a negative index gives zero output rows here, where SGLang
    computes them from a zero state. intermediate_states_buffer (per-token states in a buffer
    apart from the pool) and retrieve_parent_token (tree verify) raise NotImplementedError."""
    import torch

    who = "fused_sigmoid_gating_delta_rule_update"
    for name, x in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b)):
        _torch_tensor(x, name)
    _refuse(float(softplus_beta) != 1.0 or float(softplus_threshold) != 20.0, who,
            f"softplus_beta = {softplus_beta}, softplus_threshold = {softplus_threshold}: gdn's softplus has "
            "beta 1 and threshold 20")
    _refuse(is_kda, who, "is_kda=True (per-channel KDA gate) is not GDN")
    _refuse(intermediate_states_buffer is not None, who, "intermediate_states_buffer: SGLang caches each token's "
            "state in a buffer apart from the pool; gdn writes per-token states into the pool itself "
            "(gdn.decode_tokens with token_slots)")
    _refuse(retrieve_parent_token is not None, who, "retrieve_parent_token (tree verify: a token starts from its "
            "parent's state) is not served: gdn applies a sequence's tokens as one chain")
    _, tokens = _tokens_per_sequence(who, q, cu_seqlens)
    varlen = cu_seqlens is not None
    num_v_heads = v.shape[2]
    slots = _slot_column(_torch_tensor(initial_state_indices, "initial_state_indices"))
    write = torch.full_like(slots, -1) if disable_state_update else None
    out = decode_tokens(_token_rows(q, varlen), _token_rows(k, varlen), _token_rows(v, varlen), _gate_tokens(a, varlen),
                        _gate_tokens(b, varlen), _gate_param(A_log, "A_log", num_v_heads, q),
                        _gate_param(dt_bias, "dt_bias", num_v_heads, q), initial_state_source, slot_indices=slots,
                        write_slot_indices=write, num_tokens=tokens,
                        cu_seqlens=_index_as(cu_seqlens, slots.dtype, "cu_seqlens"), scale=scale,
                        qk_l2norm=use_qk_l2norm_in_kernel, layout="vk")
    return out.unsqueeze(0) if varlen else out


def gated_delta_rule_decode_pretranspose(q, k, v, state, A_log, a, dt_bias, b, scale=None, output=None,
                                         use_qk_l2norm=True, initial_state=None, initial_state_indices=None,
                                         output_state_indices=None, *, intermediate_states_buffer=None,
                                         disable_state_update=False):
    """FlashInfer's gated_delta_rule_decode_pretranspose, T = 1..16 tokens per sequence (MTP for
    T > 1): q, k [B, T, H, K], v [B, T, HV, V], a, b [B, T, HV], A_log [HV] float32, dt_bias [HV]
    (float32 or bf16).

    State in the v-major layout [.., HV, V, K], updated in place with the state after the last
    token, either per batch entry (state [B, HV, V, K]) or in a pool (initial_state
    [slots, HV, V, K] with initial_state_indices [B] and optional output_state_indices [B]).
    disable_state_update=True (T > 1, as FlashInfer's MTP kernel) computes the outputs and saves
    no state. Returns (output, state or initial_state); output [B, T, HV, V] in q's dtype, or
    written into `output`.
    Differs from FlashInfer on padding: index -1 gives zero output rows and leaves the pool
    untouched on every dtype (FlashInfer's bf16 path redirects it to slot 0). Looser: T > 1 with a
    float32 per-batch state (FlashInfer asks for a pool there). intermediate_states_buffer (per-
    token states in a buffer apart from the pool) raises NotImplementedError."""
    import torch

    who = "gated_delta_rule_decode_pretranspose"
    for name, x in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b)):
        _torch_tensor(x, name)
    if q.dim() != 4:
        raise ValueError(f"{who}: q has shape {tuple(q.shape)}, expected [B, T, H, K]")
    batch, tokens = q.shape[0], q.shape[1]
    if tokens == 1 and (intermediate_states_buffer is not None or disable_state_update):
        raise ValueError(f"{who}: intermediate_states_buffer and disable_state_update are for T > 1 only")
    _check_max_tokens(who, tokens)
    _refuse(intermediate_states_buffer is not None, who, "intermediate_states_buffer: FlashInfer caches each "
            "token's state in a buffer [B, T, HV, V, K] apart from the pool; gdn writes per-token states into the "
            "pool itself (gdn.decode_tokens with token_slots)")
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
    if disable_state_update:
        write_slots = torch.full_like(slots, -1)
    direct = output if output is not None and output.dtype == q.dtype else None
    out = decode_tokens(q, k, v, a, b, _gate_param(A_log, "A_log", num_v_heads, q),
                        _gate_param(dt_bias, "dt_bias", num_v_heads, q), pool, slot_indices=slots, out=direct,
                        write_slot_indices=write_slots, scale=scale, qk_l2norm=use_qk_l2norm, layout="vk")
    if pool is not returned and not disable_state_update:
        returned.copy_(pool)
    if output is not None and direct is None:
        output.copy_(out)  # FlashInfer casts into an output of another dtype
        out = output
    return out, returned
