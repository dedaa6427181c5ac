"""adapters.py: bottleneck adapters at the Pfeiffer and Houlsby positions, against a slow twin
that writes out each layer's sub-layers by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_bert
from torch import nn

import adapters


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 40, (2, 9), generator=generator),
            "attention_mask": torch.ones(2, 9, dtype=torch.long)}


@torch.no_grad()
def randomise_up(model: nn.Module, seed: int = 1) -> None:
    """Non-zero up-projections (zero at init leaves the model unchanged)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".adapter.up." in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


@pytest.mark.parametrize("kind, per_layer", [("pfeiffer", ["output.dense"]),
                                             ("houlsby", ["attention.output.dense",
                                                          "output.dense"])])
def test_each_kind_puts_its_adapters_after_its_projections(kind, per_layer):
    model = make_tiny_bert()
    names = adapters.inject_adapters(model, kind, reduction=8)
    assert [n.split("layer.0.")[1] for n in names if ".layer.0." in n] == per_layer
    assert len(names) == 2 * len(per_layer)  # two layers
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"{n}.adapter.{part}" for n in names
                       for part in ("down.weight", "down.bias", "up.weight", "up.bias")}
    H, m = 32, 4  # hidden 32, reduction 8
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
        len(names) * (2 * H * m + m + H)


@pytest.mark.parametrize("kind", adapters.KINDS)
def test_adapters_start_as_the_identity(kind):
    bare, model = make_tiny_bert().eval(), make_tiny_bert()
    adapters.inject_adapters(model, kind)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**make_batch()).last_hidden_state,
                                   bare(**make_batch()).last_hidden_state, rtol=0, atol=0)


def slow_layer(layer, adapters_of: dict, hidden: torch.Tensor, mask: torch.Tensor):
    """One BERT layer written out: self-attention, its output projection, the adapter after it
    (if any), residual and LayerNorm; then the feed-forward pair, its adapter, residual and
    LayerNorm. `adapters_of`: position -> (down, up) nn.Linear pair."""
    def adapt(position, h):
        if position not in adapters_of:
            return h
        down, up = adapters_of[position]
        return h + up(torch.relu(down(h)))

    attention = layer.attention
    B, T, H = hidden.shape
    heads = attention.self.num_attention_heads
    def split(x):
        return x.view(B, T, heads, H // heads).transpose(1, 2)
    q = split(attention.self.query(hidden))
    k = split(attention.self.key(hidden))
    v = split(attention.self.value(hidden))
    scores = q @ k.transpose(-1, -2) / (H // heads) ** 0.5 + (1 - mask[:, None, None]) * -1e9
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
    h = adapt("attention.output.dense", attention.output.dense.base(context)
              if hasattr(attention.output.dense, "base") else attention.output.dense(context))
    hidden = attention.output.LayerNorm(h + hidden)
    inner = F.gelu(layer.intermediate.dense(hidden))
    dense = layer.output.dense
    h = adapt("output.dense", dense.base(inner) if hasattr(dense, "base") else dense(inner))
    return layer.output.LayerNorm(h + hidden)


@pytest.mark.parametrize("kind", adapters.KINDS)
def test_adapted_encoder_equals_a_slow_twin_written_out_by_hand(kind):
    model = make_tiny_bert()
    adapters.inject_adapters(model, kind, reduction=4)
    randomise_up(model)
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        fast = model(**batch).last_hidden_state
        hidden = model.embeddings(input_ids=batch["input_ids"])
        mask = batch["attention_mask"].float()
        for i, layer in enumerate(model.encoder.layer):
            found = {name.split(f"layer.{i}.")[1]: (module.adapter.down, module.adapter.up)
                     for name, module in model.named_modules()
                     if isinstance(module, adapters.AdapterLinear) and f"layer.{i}." in name}
            hidden = slow_layer(layer, found, hidden, mask)
    torch.testing.assert_close(fast, hidden, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast, make_tiny_bert().eval()(**batch).last_hidden_state,
                              atol=1e-3)  # the adapters really contribute


def test_adapter_weights_read_back_every_adapter_and_name_a_missing_tensor():
    model = make_tiny_bert()
    names = adapters.inject_adapters(model, "houlsby")
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    found = adapters.adapter_weights({**state, "head.weight": torch.zeros(1)})
    assert list(found) == names and set(found[names[0]]) == {"down.weight", "down.bias",
                                                           "up.weight", "up.bias"}
    del state[f"{names[1]}.adapter.up.bias"]
    with pytest.raises(ValueError, match=f"{names[1]}.adapter.up.bias is missing"):
        adapters.adapter_weights(state)


@pytest.mark.parametrize("bad, words", [({"kind": "lora"}, "adapter_kind must be one of"),
                                        ({"reduction": 0}, "reduction must be a positive int")])
def test_bad_options_and_double_injection_are_errors(bad, words):
    with pytest.raises(ValueError, match=words):
        adapters.inject_adapters(make_tiny_bert(), **bad)
    model = make_tiny_bert()
    adapters.inject_adapters(model)
    with pytest.raises(ValueError, match="already holds adapters"):
        adapters.inject_adapters(model)
