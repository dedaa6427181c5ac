"""Deep prefix tuning (P-Tuning v2): trained keys and values prepended at every layer's attention.

Implements P-Tuning v2 (Liu et al., ACL 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to
Fine-tuning Universally Across Scales and Tasks"), deep prompt tuning in the prefix form of Li
& Liang (ACL 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"). Every layer's
self-attention attends, besides the T tokens, to P trained key/value pairs of its own:

    softmax(q [K_p; K]^T / sqrt(d) + [0; mask]) [V_p; V]

with the attention mask extended so that every token sees the P prefixes; nothing else of the
encoder changes, and only the prefixes (and the tagging head) train. Without a projection
(`prefix_projection: 0`, P-Tuning v2's choice for tagging) the prefixes are the parameters
themselves, L x 2 x P x H numbers. With one, an MLP of that width computes all of them from one
shared (P, H) embedding, Li & Liang's reparameterisation, which they found trains more stably.

Two details follow P-Tuning v2's own BERT code and PEFT's PREFIX_TUNING, which both hand the
prefixes to transformers' BERT as cached keys and values: the prefixes start as draws of N(0, 1)
(an nn.Embedding's initialisation), so the tagger is not the bare encoder at step 0; and the
tokens' positions start after the prefix, token t at position P + t, so a window may hold at
most max_position_embeddings - P subwords. The tests hold the whole encoder equal to PEFT's
PREFIX_TUNING on copied prefixes. (PEFT runs on a bare BertModel, task_type
"FEATURE_EXTRACTION"; its token-classification wrapper fails on BERT in transformers 5.24 with
"'BertModel' object has no attribute 'transformer_backbone_name'".)

Written around BERT without editing transformers' source: each layer's `attention.self` is
swapped for `PrefixSelfAttention`, which computes queries, keys and values with the layer's
own linears and runs the attention with the prefixes in front, and the embeddings' position
ids are shifted. The attention runs through torch's fused `scaled_dot_product_attention`;
`attention_reference` is the same attention written out, with explicit concatenation of keys,
values and mask, which the tests hold it equal to.

Left out: the MLP's removal after training (it stays, and runs at every forward: a few
matrix products for P rows), prefix dropout, attention masks other than none, boolean or
additive (the encoder's `attn_implementation` "sdpa" or "eager"), and merging: a prefix changes
no weight, so it cannot be merged into the encoder, nor fused.

Dimensions: B batch, T subword tokens, P prefix length, L layers, H hidden, h heads, d = H / h.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Prefixes(nn.Module):
    """The keys and values every layer prepends: `forward()` gives (L, 2, P, H), [l, 0] the keys
    and [l, 1] the values of layer l. `projection` 0: they are the parameter `embedding.weight`
    (P, L 2 H) itself; > 0: an MLP of that width computes them from `embedding.weight` (P, H)."""

    def __init__(self, layers: int, length: int, hidden: int, projection: int = 0):
        super().__init__()
        self.layers, self.length, self.hidden = layers, length, hidden
        width = hidden if projection else layers * 2 * hidden
        self.embedding = nn.Embedding(length, width)  # N(0, 1), as PEFT and P-Tuning v2
        self.mlp = nn.Sequential(nn.Linear(hidden, projection), nn.Tanh(),
                                 nn.Linear(projection, layers * 2 * hidden)) \
            if projection else None

    def forward(self) -> Tensor:
        flat = self.embedding.weight  # (P, L 2 H) or (P, H)
        if self.mlp is not None:
            flat = self.mlp(flat)  # (P, L 2 H)
        return flat.view(self.length, self.layers, 2, self.hidden).permute(1, 2, 0, 3)


def extend_mask(mask: Tensor | None, length: int) -> Tensor | None:
    """The attention mask with `length` prefix positions in front that every token attends to:
    (B, 1, T or 1, S) -> (B, 1, T or 1, length + S); a boolean mask gets True there, an additive
    one 0, and no mask stays none."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        front = mask.new_ones(*mask.shape[:-1], length)
    elif mask.is_floating_point():
        front = mask.new_zeros(*mask.shape[:-1], length)
    else:
        raise TypeError(f"prefix tuning reads boolean or additive attention masks, got "
                        f"{mask.dtype} (attn_implementation sdpa or eager)")
    return torch.cat([front, mask], dim=-1)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, prefix_k: Tensor, prefix_v: Tensor,
                        mask: Tensor | None, scale: float) -> Tensor:
    """The slow twin: the prefixed attention written out. q, k, v (B, h, T, d); prefix_k and
    prefix_v (h, P, d); mask as BERT gives it, (B, 1, T or 1, T), boolean or additive, or None.
    Returns (B, h, T, d)."""
    B = q.shape[0]
    keys = torch.cat([prefix_k.expand(B, -1, -1, -1), k], dim=2)  # (B, h, P + T, d)
    values = torch.cat([prefix_v.expand(B, -1, -1, -1), v], dim=2)  # (B, h, P + T, d)
    scores = q @ keys.transpose(-1, -2) * scale  # (B, h, T, P + T)
    mask = extend_mask(mask, prefix_k.shape[1])
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ values  # (B, h, T, d)


class PrefixSelfAttention(nn.Module):
    """BERT's self-attention of layer `index` (kept as `base`, frozen), its keys and values
    prefixed by that layer's rows of the shared `prefixes`."""

    def __init__(self, base: nn.Module, prefixes: Prefixes, index: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.prefixes = prefixes  # the same module in every layer: its parameters are shared
        self.index = index

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                **kwargs) -> tuple[Tensor, None]:  # hidden_states: (B, T, H)
        base = self.base
        B, T, _ = hidden_states.shape
        heads, d = base.num_attention_heads, base.attention_head_size

        def split(x: Tensor) -> Tensor:  # (B, S, H) -> (B, h, S, d)
            return x.view(x.shape[0], -1, heads, d).transpose(1, 2)

        q = split(base.query(hidden_states))  # (B, h, T, d)
        k = split(base.key(hidden_states))  # (B, h, T, d)
        v = split(base.value(hidden_states))  # (B, h, T, d)
        prefix = self.prefixes()[self.index].to(k.dtype)  # (2, P, H)
        prefix_k, prefix_v = split(prefix[0][None])[0], split(prefix[1][None])[0]  # (h, P, d)
        keys = torch.cat([prefix_k.expand(B, -1, -1, -1), k], dim=2)  # (B, h, P + T, d)
        values = torch.cat([prefix_v.expand(B, -1, -1, -1), v], dim=2)  # (B, h, P + T, d)
        mask = extend_mask(attention_mask, prefix_k.shape[1])  # (B, 1, T or 1, P + T)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=base.scaling,
            dropout_p=base.dropout.p if self.training else 0.0)  # (B, h, T, d)
        return out.transpose(1, 2).reshape(B, T, heads * d), None  # (B, T, H), no weights


def shift_positions(embeddings: nn.Module, length: int) -> None:
    """Make BERT's `embeddings` place token t at position `length` + t, as transformers' BERT
    does after `length` cached keys: its position ids, a buffer that is not saved, start at
    `length`. The caller keeps windows within max_position_embeddings - `length` subwords."""
    embeddings.position_ids = embeddings.position_ids + length  # (1, max positions)


def inject_prefix(model: nn.Module, length: int, projection: int = 0) -> Prefixes:
    """Prefix every self-attention of the BERT `model` with `length` trained key/value pairs,
    shift its positions past them, and freeze everything else. Returns the shared prefixes."""
    if any(isinstance(m, PrefixSelfAttention) for m in model.modules()):
        raise ValueError("model already holds prefixes; inject into a fresh model")
    layers = [name for name, m in model.named_modules() if name.endswith("attention.self")]
    if not layers:
        raise ValueError("the model has no `attention.self` modules (BERT's module names)")
    model.requires_grad_(False)
    config = model.config
    prefixes = Prefixes(len(layers), length, config.hidden_size, projection)
    for index, name in enumerate(layers):
        model.set_submodule(name, PrefixSelfAttention(model.get_submodule(name), prefixes,
                                                      index), strict=True)
    shift_positions(model.embeddings, length)
    return prefixes.to(model.embeddings.word_embeddings.weight.device)


def prefix_count(layers: int, hidden: int, length: int, projection: int) -> int:
    """Trained numbers: L 2 P H without a projection; with one of width w, the (P, H) embedding
    and the MLP, H w + w + w L 2 H + L 2 H."""
    if not projection:
        return layers * 2 * length * hidden
    out = layers * 2 * hidden
    return length * hidden + hidden * projection + projection + projection * out + out


# ---------------------------------------------------------------------------------------------
# The method as the table applies it (methods.py)


def apply(encoder: nn.Module, cfg, sources: Sequence[Path] = ()) -> dict:
    """`method: prefix`: `cfg.prefix_length` prefixes at every layer (through an MLP of width
    `cfg.prefix_projection` when > 0); everything else frozen."""
    inject_prefix(encoder, cfg.prefix_length, cfg.prefix_projection)
    return {}

