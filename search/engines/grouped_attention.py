"""Grouped-query attention without copying the cache, for the transformers engine on a CPU.

transformers' SDPA attention hands PyTorch a mask only after repeating every key/value head for each query head
in its group (``repeat_kv``) on a CPU: a copy of the whole cache in every layer at every step, seven times over
for Qwen2.5-0.5B (14 query heads, 2 key/value heads): a decoding step of 20 rows took 0.89 s with the copies
and 0.28 s without (docs/architecture.md). PyTorch's ``scaled_dot_product_attention(..., enable_gqa=True)``
reads the shared heads in place, with the mask, and gives the same numbers. Registered through transformers' own
attention and mask interfaces.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "sdpa_grouped"


def grouped_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                         cache: object = None, **_: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: [batch, heads, tokens, head size] in, [batch, tokens, heads, size] out.

    It covers the part of transformers' SDPA path the engine uses: ``key`` and ``value`` already hold every cached
    position (the model updated its ``DynamicCache`` before the call), masked by ``attention_mask``. The rest of that
    path (a paged cache that the attention itself updates, as transformers' own continuous batching passes it; a
    position bias) it refuses rather than compute something else."""
    if cache is not None or position_bias is not None:
        given = f"a {type(cache).__name__}" if cache is not None else "a position bias"
        raise NotImplementedError(
            f"{NAME} attention (search/engines/grouped_attention.py) supports caches the model updates itself, such "
            f"as DynamicCache, without a position bias; it was given {given}: load the model with "
            "attn_implementation='sdpa' for this")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(query.shape[2] > 1 and attention_mask is None and causal),
        enable_gqa=key.shape[1] != query.shape[1])
    return output.transpose(1, 2).contiguous(), None


def use_grouped_attention(model: Any) -> bool:
    """Switch ``model`` (loaded with SDPA attention) to the grouped kind; False, and unchanged, for any other."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, grouped_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True
