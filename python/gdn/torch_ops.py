"""torch.ops.gdn.decode_ and torch.ops.gdn.decode_tokens_: gdn.decode and gdn.decode_tokens as
torch custom operators.

    import gdn.torch_ops   # registers the operators (needs torch >= 2.4)
    torch.ops.gdn.decode_(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out)
    torch.ops.gdn.decode_tokens_(q, k, v, a, b, A_log, dt_bias, state_pool, out, slot_indices,
                                 num_tokens, cu_seqlens, token_slots, num_accepted)

torch.compile cannot trace into a ctypes call; the operator appears in the graph as one node
that mutates state_pool and out (declared, so functionalization keeps the order right). The
arguments are gdn.decode's, with out required (an operator that mutates cannot also allocate
and return it). gdn.decode itself calls this operator when torch.compile traces it, so compiled
code can call either.
"""
from typing import Optional

import torch

from .decode import decode, decode_tokens


@torch.library.custom_op("gdn::decode_", mutates_args=("state_pool", "out"))
def decode_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
            A_log: torch.Tensor, dt_bias: torch.Tensor, state_pool: torch.Tensor, slot_indices: torch.Tensor,
            out: torch.Tensor, write_slot_indices: Optional[torch.Tensor] = None, scale: float = 0.0,
            qk_l2norm: bool = True, head_map: str = "grouped", layout: str = "vk", null_slot_zero: bool = False,
            backend: str = "auto", num_threads: int = 0) -> None:
    """gdn.decode(..., out=out) for torch tensors; see gdn.decode."""
    decode(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out=out, write_slot_indices=write_slot_indices,
           scale=scale, qk_l2norm=qk_l2norm, head_map=head_map, layout=layout, null_slot_zero=null_slot_zero,
           backend=backend, num_threads=num_threads)


@decode_.register_fake
def _decode_fake(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices, out, write_slot_indices=None, scale=0.0,
                 qk_l2norm=True, head_map="grouped", layout="vk", null_slot_zero=False, backend="auto",
                 num_threads=0):
    # Nothing is returned: the results are the in-place updates of state_pool and out.
    return None


@torch.library.custom_op("gdn::decode_tokens_", mutates_args=("state_pool", "out"))
def decode_tokens_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   A_log: torch.Tensor, dt_bias: torch.Tensor, state_pool: torch.Tensor, out: torch.Tensor,
                   slot_indices: Optional[torch.Tensor] = None, num_tokens: Optional[int] = None,
                   cu_seqlens: Optional[torch.Tensor] = None, token_slots: Optional[torch.Tensor] = None,
                   num_accepted: Optional[torch.Tensor] = None, write_slot_indices: Optional[torch.Tensor] = None,
                   scale: float = 0.0, qk_l2norm: bool = True, head_map: str = "grouped", layout: str = "vk",
                   null_slot_zero: bool = False, backend: str = "auto", num_threads: int = 0) -> None:
    """gdn.decode_tokens(..., out=out) for torch tensors; see gdn.decode_tokens."""
    decode_tokens(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices=slot_indices, num_tokens=num_tokens,
                  cu_seqlens=cu_seqlens, token_slots=token_slots, num_accepted=num_accepted, out=out,
                  write_slot_indices=write_slot_indices, scale=scale, qk_l2norm=qk_l2norm, head_map=head_map,
                  layout=layout, null_slot_zero=null_slot_zero, backend=backend, num_threads=num_threads)


@decode_tokens_.register_fake
def _decode_tokens_fake(q, k, v, a, b, A_log, dt_bias, state_pool, out, slot_indices=None, num_tokens=None,
                        cu_seqlens=None, token_slots=None, num_accepted=None, write_slot_indices=None, scale=0.0,
                        qk_l2norm=True, head_map="grouped", layout="vk", null_slot_zero=False, backend="auto",
                        num_threads=0):
    return None
