"""torch.ops.gdn.decode_, torch.ops.gdn.decode_tokens_ and torch.ops.gdn.forward_: gdn.decode,
gdn.decode_tokens and gdn.forward as torch custom operators.

    import gdn.torch_ops   # registers the operators (needs torch >= 2.4)
    torch.ops.gdn.decode_(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out)
    torch.ops.gdn.decode_tokens_(q, k, v, a, b, A_log, dt_bias, state_pool, out, slot_indices,
                                 num_tokens, cu_seqlens, token_slots, num_accepted)
    torch.ops.gdn.forward_(q, k, v, a, b, A_log, dt_bias, state_pool, out, cu_seqlens, slot_indices)

torch.compile cannot trace into a ctypes call; the operator appears in the graph as one node
that mutates state_pool and out (declared, so functionalization keeps the order right). The
arguments are gdn.decode's, with out required (an operator that mutates cannot also allocate
and return it). gdn.decode itself calls this operator when torch.compile traces it, so compiled
code can call either. With precomputed gates (g=, beta=), a, b, A_log and dt_bias are None.
"""
from typing import Optional

import torch

from .decode import decode, decode_tokens
from .forward import forward


@torch.library.custom_op("gdn::decode_", mutates_args=("state_pool", "out"))
def decode_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor],
            A_log: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], state_pool: torch.Tensor,
            slot_indices: torch.Tensor, out: torch.Tensor, write_slot_indices: Optional[torch.Tensor] = None,
            scale: float = 0.0, qk_l2norm: bool = True, head_map: str = "grouped", layout: str = "vk",
            null_slot_zero: bool = False, backend: str = "auto", num_threads: int = 0,
            g: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None) -> None:
    """gdn.decode(..., out=out) for torch tensors; see gdn.decode."""
    decode(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out=out, write_slot_indices=write_slot_indices,
           scale=scale, qk_l2norm=qk_l2norm, head_map=head_map, layout=layout, null_slot_zero=null_slot_zero,
           backend=backend, num_threads=num_threads, g=g, beta=beta)


@decode_.register_fake
def _decode_fake(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices=None, scale=0.0,
                 qk_l2norm=True, head_map="grouped", layout="vk", null_slot_zero=False, backend="auto",
                 num_threads=0, g=None, beta=None):
    # Nothing is returned: the results are the in-place updates of state_pool and out.
    return None


@torch.library.custom_op("gdn::decode_tokens_", mutates_args=("state_pool", "out"))
def decode_tokens_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Optional[torch.Tensor],
                   b: Optional[torch.Tensor], A_log: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                   state_pool: torch.Tensor, out: torch.Tensor,
                   slot_indices: Optional[torch.Tensor] = None, num_tokens: Optional[int] = None,
                   cu_seqlens: Optional[torch.Tensor] = None, token_slots: Optional[torch.Tensor] = None,
                   num_accepted: Optional[torch.Tensor] = None, write_slot_indices: Optional[torch.Tensor] = None,
                   scale: float = 0.0, qk_l2norm: bool = True, head_map: str = "grouped", layout: str = "vk",
                   null_slot_zero: bool = False, backend: str = "auto", num_threads: int = 0,
                   g: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None) -> None:
    """gdn.decode_tokens(..., out=out) for torch tensors; see gdn.decode_tokens."""
    decode_tokens(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices=slot_indices, num_tokens=num_tokens,
                  cu_seqlens=cu_seqlens, token_slots=token_slots, num_accepted=num_accepted, out=out,
                  write_slot_indices=write_slot_indices, scale=scale, qk_l2norm=qk_l2norm, head_map=head_map,
                  layout=layout, null_slot_zero=null_slot_zero, backend=backend, num_threads=num_threads, g=g,
                  beta=beta)


@decode_tokens_.register_fake
def _decode_tokens_fake(q, k, v, a, b, A_log, dt_bias, state_pool, out, slot_indices=None, num_tokens=None,
                        cu_seqlens=None, token_slots=None, num_accepted=None, write_slot_indices=None, scale=0.0,
                        qk_l2norm=True, head_map="grouped", layout="vk", null_slot_zero=False, backend="auto",
                        num_threads=0, g=None, beta=None):
    return None


@torch.library.custom_op("gdn::forward_", mutates_args=("state_pool", "out"))
def forward_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor],
             A_log: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], state_pool: torch.Tensor,
             out: torch.Tensor, cu_seqlens: torch.Tensor, slot_indices: torch.Tensor,
             write_slot_indices: Optional[torch.Tensor] = None, has_initial_state: Optional[torch.Tensor] = None,
             g: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None, max_seqlen: Optional[int] = None,
             scale: float = 0.0, qk_l2norm: bool = True, head_map: str = "grouped", layout: str = "vk",
             null_slot_zero: bool = False, backend: str = "auto", num_threads: int = 0) -> None:
    """gdn.forward(..., out=out) for torch tensors; see gdn.forward."""
    forward(q, k, v, a, b, A_log, dt_bias, state_pool, cu_seqlens=cu_seqlens, slot_indices=slot_indices,
            write_slot_indices=write_slot_indices, has_initial_state=has_initial_state, out=out, scale=scale,
            qk_l2norm=qk_l2norm, head_map=head_map, layout=layout, backend=backend, g=g, beta=beta,
            num_threads=num_threads, null_slot_zero=null_slot_zero, max_seqlen=max_seqlen)


@forward_.register_fake
def _forward_fake(q, k, v, a, b, A_log, dt_bias, state_pool, out, cu_seqlens, slot_indices, write_slot_indices=None,
                  has_initial_state=None, g=None, beta=None, max_seqlen=None, scale=0.0, qk_l2norm=True,
                  head_map="grouped", layout="vk", null_slot_zero=False, backend="auto", num_threads=0):
    return None
