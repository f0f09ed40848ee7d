"""Drop-in wrappers with the call signatures engines use today, running gdn.decode_tokens and
gdn.forward underneath.

    fused_recurrent_gated_delta_rule            FLA (fla.ops.gated_delta_rule) and vLLM's copy
    chunk_gated_delta_rule                      FLA's (and vLLM's, SGLang's) prefill entry point, inference only
    fused_recurrent_gated_delta_rule_packed_decode   vLLM (packed q|k|v projection)
    fused_sigmoid_gating_delta_rule_update      SGLang (gate and beta sigmoid in the kernel)
    gated_delta_rule_decode_pretranspose        FlashInfer (flashinfer.gdn_decode)

They take torch tensors, as the originals do, and serve what gdn computes: decode, speculative
verify and MTP (1..16 tokens per sequence, fixed T or varlen cu_seqlens) on every backend, and
FLA's state-in/state-out calls (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule without
a pool) with sequences of any length on every backend; per-token state snapshots where the
original writes them into the pool (vLLM's 2-D ssm_state_indices with num_accepted_tokens); the
gates either raw (g = -exp(A_log) * softplus(a + dt_bias) and beta = sigmoid(b) computed in the
kernel) or precomputed (gdn 0.5; on cuda since 0.5.1). Anything else (per-channel gates,
tree verify, per-token states in a buffer apart from the pool, gradients...) raises
NotImplementedError saying why, never a silently different result; what the library refuses on
a backend raises its gdn.GdnError. Where
behaviour differs from the original (padding rows above all) python/README.md says so.
"""
import functools
import sys
import warnings

from ._lib import MAX_TOKENS
from .decode import decode, decode_tokens
from .forward import forward

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


def _tokens_per_sequence(who, q, cu_seqlens, table_width=None, limit=True):
    """(N, T) of a [B, T, ...] batch, or of a varlen [1, R, ...] one with cu_seqlens [N + 1]; for
    varlen, T is a bound on the tokens of any sequence (what gdn's num_tokens takes).

    cu_seqlens on the CPU is read (T exact). On a GPU it is not read where that can be avoided
    (reading synchronises and breaks CUDA graph capture): T is then the width of a 2-D
    ssm_state_indices table (one column per token), else 1 when there are as many rows as
    sequences (a decode batch: cu_seqlens taken to be arange(N + 1); the kernel skips a sequence
    with more tokens), else the row count when that is at most 16, else read from the device.
    limit=False leaves the number of tokens to the library (gdn.forward: any on the cpu backend)."""
    if q.dim() != 4:
        raise ValueError(f"{who}: q has shape {tuple(q.shape)}, expected [B, T, H, K]")
    if cu_seqlens is None:
        batch, tokens = q.shape[0], q.shape[1]
        if limit:
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
    if limit:
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


def _forward_only(function):
    """function run under torch.no_grad(): gdn computes no gradient, and what a wrapper returns
    must not pretend to carry one (a float32 copy of an initial state that requires grad would
    otherwise pass gradients back as if the state went through unchanged). A backward through
    the results fails loudly instead."""
    @functools.wraps(function)
    def forward_only(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)
    return forward_only


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
    if transpose_state_layout is not None:
        warnings.warn("transpose_state_layout is deprecated (as in FLA); it is state_v_first now", DeprecationWarning,
                      stacklevel=4)
    flag = state_v_first if state_v_first is not None else transpose_state_layout
    if flag is None:
        return "vk" if vllm_pool else "kv"
    return "vk" if flag else "kv"


def _fla_gates(who, v, g, beta, a, b, A_log, dt_bias, use_gate_in_kernel, use_beta_sigmoid_in_kernel,
               allow_neg_eigval, gk, gv):
    """The gates FLA passes under its in-kernel flags (or gdn's own keywords a= and b=), in one of
    the two forms gdn takes: dict(a, b, A_log, dt_bias) computed in the kernel, or dict(g, beta)
    precomputed (gdn 0.5: cpu and reference backends). Where FLA mixes the two (a raw gate with a
    precomputed beta, or the reverse), or asks for what gdn has no in-kernel form of (g=None: no
    decay; beta=None: beta = 1; allow_neg_eigval: beta = 2 sigmoid(b)), the precomputed form is
    built here in float32 from what was given. Shapes as given ([B, T, HV] or token rows)."""
    import torch
    import torch.nn.functional as F

    _refuse(gk is not None or gv is not None, who, "per-channel gates gk/gv are not GDN; gdn has the scalar "
            "per-head gate only")
    if a is not None and g is not None:
        raise TypeError(f"{who}: pass the raw gate as a= or as g= with use_gate_in_kernel=True, not both")
    if b is not None and beta is not None:
        raise TypeError(f"{who}: pass the beta logit as b= or as beta= with use_beta_sigmoid_in_kernel=True, not both")
    raw_gate = a if a is not None else (g if use_gate_in_kernel else None)
    raw_beta = b if b is not None else (beta if use_beta_sigmoid_in_kernel else None)
    if allow_neg_eigval and raw_beta is None:
        raise ValueError(f"{who}: allow_neg_eigval=True requires use_beta_sigmoid_in_kernel=True (as in FLA)")
    if raw_gate is not None:
        _torch_tensor(raw_gate, "g (raw gate input)")
        if A_log is None:
            raise TypeError(f"{who}: A_log is required with use_gate_in_kernel=True (or a=)")
    num_v_heads = v.shape[2]
    if raw_gate is not None and raw_beta is not None and not allow_neg_eigval:
        return dict(a=raw_gate, b=_torch_tensor(raw_beta, "beta (beta logit)"),
                    A_log=_gate_param(A_log, "A_log", num_v_heads, v),
                    dt_bias=_gate_param(dt_bias, "dt_bias", num_v_heads, v))
    gate_shape = tuple(v.shape[:-1])  # [B, T, HV]
    if raw_gate is not None:
        x = raw_gate.to(torch.float32) + _gate_param(dt_bias, "dt_bias", num_v_heads, v)
        g = -_gate_param(A_log, "A_log", num_v_heads, v).exp() * F.softplus(x)
    elif g is None:
        g = torch.zeros(gate_shape, dtype=torch.float32, device=v.device)  # FLA: no gate, no decay
    elif _torch_tensor(g, "g").dtype != torch.float32:
        g = g.to(torch.float32)  # gdn reads the log-decay in float32
    if raw_beta is not None:
        beta = torch.sigmoid(_torch_tensor(raw_beta, "beta (beta logit)").to(torch.float32))
        if allow_neg_eigval:
            beta = beta * 2
    elif beta is None:
        beta = torch.ones(gate_shape, dtype=v.dtype, device=v.device)  # FLA: beta = 1
    _refuse(_torch_tensor(beta, "beta").dim() == 4, who, f"a per-channel beta (shape {tuple(beta.shape)}) is not "
            "GDN's; gdn takes one beta per token and value head")
    return dict(g=g, beta=beta)


def _one_act_dtype(acts):
    """The activations (q, k, v, and a, b or beta) in one dtype, as gdn reads them: as given when
    they share one, else all as float32 (FLA takes e.g. float32 q, k with float16 v; float32
    holds every value of the narrower dtypes exactly)."""
    import torch

    if len({x.dtype for x in acts.values()}) <= 1:
        return acts
    return {name: x.to(torch.float32) for name, x in acts.items()}


def _activations(q, k, v, gates, rows):
    """q, k, v and the gates as keyword arguments of gdn.decode_tokens / gdn.forward: rows(x)
    turns a [B, T, ...] tensor into what the call takes (the gates may already be token rows
    [tokens, HV]); the activations in one dtype; None for the gate form not used."""
    acts = dict(q=rows(q), k=rows(k), v=rows(v))
    arguments = dict(a=None, b=None, A_log=None, dt_bias=None, g=None, beta=None)
    for name, x in gates.items():
        if name in ("A_log", "dt_bias"):
            arguments[name] = x
        elif name == "g":
            arguments[name] = x if x.dim() == 2 else rows(x)
        else:  # a, b, beta: in the activation dtype
            acts[name] = x if x.dim() == 2 else rows(x)
    arguments.update(_one_act_dtype(acts))
    return arguments


def _fla_state_call(who, q, k, v, gates, scale, initial_state, output_final_state, cu_seqlens, layout, qk_l2norm):
    """FLA's state-in/state-out call on gdn.forward: sequences of any length; initial_state
    [N, HV, K, V] ("kv") or [N, HV, V, K] ("vk"), None = zeros, never modified; returns (o like v,
    the final state as a new float32 tensor or None)."""
    import torch

    varlen = cu_seqlens is not None
    num_seqs, tokens = _tokens_per_sequence(who, q, cu_seqlens, limit=False)
    batch, length = q.shape[:2]
    num_v_heads, head_k, head_v = v.shape[2], q.shape[3], v.shape[3]
    row = (head_v, head_k) if layout == "vk" else (head_k, head_v)
    if varlen:
        cu = _torch_tensor(cu_seqlens, "cu_seqlens")
        if cu.dtype not in (torch.int32, torch.int64):
            cu = cu.to(torch.int64)
        cu = cu.contiguous()
    else:
        cu = torch.arange(batch + 1, dtype=torch.int64, device=q.device) * length
    if initial_state is not None:
        _torch_tensor(initial_state, "initial_state")
        if initial_state.shape[0] != num_seqs:
            raise ValueError(f"{who}: initial_state has {initial_state.shape[0]} states for {num_seqs} sequences")
        if tuple(initial_state.shape) != (num_seqs, num_v_heads) + row:
            names = "[N, HV, V, K] (state_v_first=True)" if layout == "vk" else "[N, HV, K, V]"
            raise ValueError(f"{who}: initial_state has shape {tuple(initial_state.shape)}, expected {names} = "
                             f"{(num_seqs, num_v_heads) + row}")
    if layout == "kv" and q.is_cuda and tokens > MAX_TOKENS:
        # gdn's cuda chunked prefill takes the vk layout only: run on a transposed copy (FLA's
        # default [N, HV, K, V] state is small beside the activations of a long sequence)
        state_vk = None if initial_state is None else initial_state.transpose(-1, -2)
        o, final = _fla_state_call(who, q, k, v, gates, scale, state_vk, output_final_state, cu_seqlens, "vk",
                                   qk_l2norm)
        return o, (None if final is None else final.transpose(-1, -2).contiguous())
    slots = torch.arange(num_seqs, dtype=cu.dtype, device=q.device)
    write = None
    if output_final_state:
        # the pool the call updates is the returned final state: a float32 copy of the initial one
        pool = (torch.zeros((num_seqs, num_v_heads) + row, dtype=torch.float32, device=q.device)
                if initial_state is None else
                initial_state.to(torch.float32, copy=True, memory_format=torch.contiguous_format))
    else:
        write = torch.full_like(slots, -1)  # compute the outputs, save no state
        if initial_state is None:
            pool = torch.zeros((num_seqs, num_v_heads) + row, dtype=torch.float32, device=q.device)
        elif initial_state.dtype in (torch.float32, torch.bfloat16):
            pool = initial_state.contiguous()  # only read
        else:
            pool = initial_state.to(torch.float32)
    out = forward(state_pool=pool, cu_seqlens=cu, slot_indices=slots, write_slot_indices=write, scale=scale,
                  qk_l2norm=qk_l2norm, layout=layout, max_seqlen=tokens,
                  **_activations(q, k, v, gates, lambda x: x.flatten(0, 1)))
    o = out.unflatten(0, (batch, length))
    if o.dtype != v.dtype:
        o = o.to(v.dtype)  # FLA's o has v's dtype
    return o, (pool if output_final_state else None)


@_forward_only
def fused_recurrent_gated_delta_rule(q, k, v, g=None, beta=None, scale=None, initial_state=None, *,
                                     output_final_state=False, inplace_final_state=None,
                                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, ssm_state_indices=None,
                                     num_accepted_tokens=None, retrieve_parent_token=None, use_gate_in_kernel=False,
                                     A_log=None, dt_bias=None, use_beta_sigmoid_in_kernel=False,
                                     allow_neg_eigval=False, state_v_first=None, transpose_state_layout=None, gk=None,
                                     gv=None, a=None, b=None, head_first=False, null_slot_zero=False):
    """FLA's fused_recurrent_gated_delta_rule (and vLLM's copy of it), forward only.

    q, k [B, T, H, K], v [B, T, HV, V], or varlen [1, R, ...] with cu_seqlens [N + 1].
    Gates, [B, T, HV] like q (or token rows [tokens, HV]), as FLA takes them:
      - precomputed: g the log-decay (float32; None = no decay) and beta after the sigmoid (None
        = 1), as FLA's default and vLLM's decode call pass them. gdn 0.5, cpu and reference
        backends; the cuda backend refuses them (gdn.GdnArgumentError).
      - in the kernel: g = the raw gate input with use_gate_in_kernel=True, A_log [HV], dt_bias
        [HV] (optional), and beta = the beta logit with use_beta_sigmoid_in_kernel=True (or gdn's
        names a= and b=): every backend. One of the two computed in the kernel and the other
        precomputed, or allow_neg_eigval=True (beta = 2 sigmoid(b)), is served by precomputing
        both here (float32).
    q, k, v and beta (or b) in different dtypes are read as float32; o has v's dtype.

    State, as FLA does it (no ssm_state_indices): initial_state [N, HV, K, V] (None = zeros),
    or [N, HV, V, K] with state_v_first=True (older FLA: transpose_state_layout=True), is left
    unchanged; output_final_state=True returns the state after each sequence's last token as a
    new float32 tensor, else None. Sequences of any length (gdn.forward; on cuda, sequences of
    more than 16 tokens with an [N, HV, K, V] state run on a transposed copy of it, since the
    chunked kernels take the [N, HV, V, K] layout).
    With inplace_final_state=True that state overwrites initial_state instead (1..16 tokens).
    As vLLM does it: initial_state is the pool [slots, HV, V, K] (vLLM's layout; state_v_first=
    False for a [slots, HV, K, V] pool), updated in place. ssm_state_indices [N] gives each
    sequence's slot (one token per sequence); a 2-D [N, W] table gives one slot per token: the
    sequence starts from column 0, or from column num_accepted_tokens[n] - 1 (speculative
    decoding), and the state after token t goes to column t. Negative slots are padding rows
    (zero output) or unsaved states, and slot 0 too with null_slot_zero=True (vLLM's
    NULL_BLOCK_ID = 0, where the vLLM version has it). 1..16 tokens per sequence.
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
    gates = _fla_gates(who, v, g, beta, a, b, A_log, dt_bias, use_gate_in_kernel, use_beta_sigmoid_in_kernel,
                       allow_neg_eigval, gk, gv)
    vllm_pool = ssm_state_indices is not None or bool(inplace_final_state)
    layout = _state_layout(state_v_first, transpose_state_layout, vllm_pool)
    table = ssm_state_indices if ssm_state_indices is not None and ssm_state_indices.dim() == 2 else None
    _refuse(num_accepted_tokens is not None and table is None, who, "num_accepted_tokens selects the start state "
            "from a 2-D ssm_state_indices [N, T] table (vLLM's speculative decoding); pass one")
    if not vllm_pool:
        # FLA: the initial state is an input; the final state, if asked for, is a new float32 tensor.
        return _fla_state_call(who, q, k, v, gates, scale, initial_state, output_final_state, cu_seqlens, layout,
                               use_qk_l2norm_in_kernel)

    num_seqs, tokens = _tokens_per_sequence(who, q, cu_seqlens, None if table is None else table.shape[1])
    varlen = cu_seqlens is not None
    acts = _activations(q, k, v, gates, lambda x: _token_rows(x, varlen))
    options = dict(scale=scale, qk_l2norm=use_qk_l2norm_in_kernel, layout=layout, num_tokens=tokens)
    if ssm_state_indices is not None:
        index_dtype = _torch_tensor(ssm_state_indices, "ssm_state_indices").dtype
    else:
        index_dtype = cu_seqlens.dtype if varlen else torch.int64
    if varlen:
        options["cu_seqlens"] = _index_as(cu_seqlens, index_dtype, "cu_seqlens")

    def finish(out):
        out = out.unsqueeze(0) if varlen else out
        return out if out.dtype == v.dtype else out.to(v.dtype)

    def sequence_rows():
        return torch.arange(num_seqs, device=q.device, dtype=index_dtype)

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
    return finish(decode_tokens(slot_indices=read, token_slots=table, num_accepted=accepted, **pool_options)), pool


# FLA keywords of chunk_gated_delta_rule that only tune how FLA computes (chunk size, precomputed
# chunk indices, a host copy of cu_seqlens): gdn chooses its own way and needs none of them.
_CHUNK_IGNORED = ("chunk_size", "chunk_indices", "cu_seqlens_cpu")


@_forward_only
def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           cu_seqlens=None, head_first=False, use_qk_l2norm_in_kernel=False, **kw):
    """FLA's chunk_gated_delta_rule (fla.ops.gated_delta_rule; vLLM's and SGLang's copies), the
    forward pass for inference: sequences of any length, e.g. a prefill, on gdn.forward.

    q, k [B, T, H, K], v [B, T, HV, V] (HV a multiple of H), g [B, T, HV] the log-decay
    (precomputed; float32 is read as it is, other dtypes are converted), beta [B, T, HV] after
    the sigmoid; or varlen: B = 1 and cu_seqlens [N + 1] (int32/int64). initial_state [N, HV, K,
    V] (FLA's layout; [N, HV, V, K] with state_v_first=True), None = zeros; it is not modified.
    Returns (o [B, T, HV, V] in v's dtype, the state after each sequence's last token [N, HV, K,
    V] float32 when output_final_state, else None). scale None = 1/sqrt(K). Positional order is
    vLLM's (cu_seqlens 9th, as this signature); FLA's newer versions take everything after
    output_final_state by keyword.

    FLA's other keywords are taken: use_gate_in_kernel=True with A_log= and dt_bias= (g is then
    the raw gate input), use_beta_sigmoid_in_kernel=True (beta is the logit), allow_neg_eigval
    (with it: beta = 2 sigmoid(logit)), state_v_first (or transpose_state_layout); chunk_size,
    chunk_indices and cu_seqlens_cpu are accepted and not needed. cp_context (context parallel)
    and head_first=True raise NotImplementedError; autograd is not supported (o and the final
    state carry no gradient).

    Backends: precomputed g and beta and sequences longer than 16 tokens run on the cpu (and
    reference) backend; the cuda backend (gdn 0.5) refuses them with gdn.GdnArgumentError and
    the library's message. Head sizes K, V up to 256 (gdn.MAX_HEAD_DIM), any of them (FLA's
    tests use 60, 64, 100, 128).
    """
    who = "chunk_gated_delta_rule"
    for name, x in (("q", q), ("k", k), ("v", v)):
        _torch_tensor(x, name)
    _refuse(head_first, who, "head_first=True (removed from FLA) is not supported; pass [B, T, H, ...] tensors")
    _refuse(kw.pop("cp_context", None) is not None, who, "cp_context (context parallel training) is not served")
    state_v_first = kw.pop("state_v_first", None)
    transpose_state_layout = kw.pop("transpose_state_layout", None)
    use_gate_in_kernel = kw.pop("use_gate_in_kernel", False)
    use_beta_sigmoid_in_kernel = kw.pop("use_beta_sigmoid_in_kernel", False)
    allow_neg_eigval = kw.pop("allow_neg_eigval", False)
    A_log, dt_bias = kw.pop("A_log", None), kw.pop("dt_bias", None)
    chunk_size = kw.pop("chunk_size", 64)
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"{who}: chunk_size = {chunk_size}; FLA takes 16, 32 or 64 (gdn chooses its own)")
    for name in _CHUNK_IGNORED:
        kw.pop(name, None)
    if kw:
        raise TypeError(f"{who}: unexpected keyword argument(s) {', '.join(sorted(kw))}")
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"{who}: q, k [B, T, H, K] and v [B, T, HV, V] expected; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if v.shape[2] % q.shape[2]:
        raise ValueError(f"{who}: HV = {v.shape[2]} value heads is not a multiple of H = {q.shape[2]}")
    if not use_gate_in_kernel and A_log is not None:
        A_log = dt_bias = None  # FLA ignores them unless the gate is computed in the kernel
    if use_gate_in_kernel and A_log is None:
        raise TypeError(f"{who}: A_log must be given with use_gate_in_kernel=True")
    _torch_tensor(_required(g, who, "g"), "g")
    _torch_tensor(_required(beta, who, "beta"), "beta")
    gates = _fla_gates(who, v, g, beta, None, None, A_log, dt_bias, use_gate_in_kernel, use_beta_sigmoid_in_kernel,
                       allow_neg_eigval, None, None)
    layout = _state_layout(state_v_first, transpose_state_layout, False)  # FLA's default: [N, HV, K, V]
    return _fla_state_call(who, q, k, v, gates, scale, initial_state, output_final_state, cu_seqlens, layout,
                           use_qk_l2norm_in_kernel)


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
