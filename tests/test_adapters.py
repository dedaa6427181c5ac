"""adapters.py: bottleneck adapters of the three kinds, in each of their options, against a slow
twin that writes out each layer's sub-layers by hand; the kinds' defaults and how a config
resolves them. (Their agreement with AdapterHub's own modules is bench/adapterhub_check.py's.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_bert
from torch import nn

import adapters
from config import ConfigError
from runs import config_files


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": torch.randint(5, 40, (2, 9), generator=generator),
            "attention_mask": mask}


@torch.no_grad()
def randomise_up(model: nn.Module, seed: int = 1) -> None:
    """Non-zero up-projections (zero at init leaves the model unchanged)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".adapter.up." in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


# (kind, options) -> what each adapter reads, its activation and its scale, written out
VARIANTS = [
    ("pfeiffer", {}, "LN(h + r)", "relu", 1.0),
    ("houlsby", {}, "h", "swish", 1.0),
    ("parallel", {}, "r", "relu", 4.0),
    ("pfeiffer", {"original_ln_before": False}, "h", "relu", 1.0),
    ("houlsby", {"original_ln_before": True, "non_linearity": "gelu", "scaling": 0.5},
     "LN(h + r)", "gelu", 0.5),
    ("parallel", {"non_linearity": "tanh", "scaling": 2.0}, "r", "tanh", 2.0),
]
IDS = [f"{kind}-{i}" for i, (kind, *_) in enumerate(VARIANTS)]


@pytest.mark.parametrize("kind, per_layer", [("pfeiffer", ["output"]),
                                             ("houlsby", ["attention.output", "output"]),
                                             ("parallel", ["output"])])
def test_each_kind_puts_its_adapters_in_its_output_blocks(kind, per_layer):
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
    # the frozen weights keep the names the encoder's checkpoint gives them
    assert {n for n, _ in model.named_parameters()} - trained == \
        {n for n, _ in make_tiny_bert().named_parameters()}


@pytest.mark.parametrize("kind, options, read, activation, scale", VARIANTS, ids=IDS)
def test_adapters_start_as_the_identity(kind, options, read, activation, scale):
    bare, model = make_tiny_bert().eval(), make_tiny_bert()
    adapters.inject_adapters(model, kind, **options)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**make_batch()).last_hidden_state,
                                   bare(**make_batch()).last_hidden_state, rtol=0, atol=0)


ACTIVATIONS = {"relu": torch.relu, "swish": lambda x: x * torch.sigmoid(x),
               "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / 2 ** 0.5)), "tanh": torch.tanh}


def slow_block(block, x, r, adapter):
    """An output block written out: h = dense(x), the adapter's input as `adapter` says (read,
    activation, scale, down, up), then LN(h + r + s up(act(down(a))))."""
    h = x @ block.dense.weight.T + block.dense.bias
    if adapter is None:
        return block.LayerNorm(h + r)
    read, activation, scale, down, up = adapter
    a = {"h": h, "r": r, "LN(h + r)": block.LayerNorm(h + r)}[read]
    update = scale * (ACTIVATIONS[activation](a @ down.weight.T + down.bias) @ up.weight.T
                      + up.bias)
    return block.LayerNorm(h + r + update)


def slow_layer(layer, adapter_of: dict, hidden: torch.Tensor, mask: torch.Tensor):
    """One BERT layer written out: self-attention, its output block (with its adapter, if
    any), then the feed-forward pair and its output block. `adapter_of`: block -> (read,
    activation, scale, down, up)."""
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
    hidden = slow_block(attention.output, context, hidden, adapter_of.get("attention.output"))
    inner = F.gelu(layer.intermediate.dense(hidden))
    return slow_block(layer.output, inner, hidden, adapter_of.get("output"))


@pytest.mark.parametrize("kind, options, read, activation, scale", VARIANTS, ids=IDS)
def test_adapted_encoder_equals_a_slow_twin_written_out_by_hand(kind, options, read, activation,
                                                                scale):
    model = make_tiny_bert()
    names = adapters.inject_adapters(model, kind, reduction=4, **options)
    randomise_up(model)
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        fast = model(**batch).last_hidden_state
        hidden = model.embeddings(input_ids=batch["input_ids"])
        mask = batch["attention_mask"].float()
        for i, layer in enumerate(model.encoder.layer):
            adapter_of = {}
            for name in names:
                if f"layer.{i}." in name:
                    adapter = model.get_submodule(name).adapter
                    adapter_of[name.split(f"layer.{i}.")[1]] = (read, activation, scale,
                                                                adapter.down, adapter.up)
            hidden = slow_layer(layer, adapter_of, hidden, mask)
    real = batch["attention_mask"].bool()  # padded rows attend nowhere useful: compare the rest
    torch.testing.assert_close(fast[real], hidden[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast, make_tiny_bert().eval()(**batch).last_hidden_state,
                              atol=1e-3)  # the adapters really contribute


def test_the_options_change_what_the_adapters_compute():
    """Each option is really used: the same weights under another read, activation or scale
    give other hidden states."""
    def hidden_with(kind, **options):
        model = make_tiny_bert()
        adapters.inject_adapters(model, kind, reduction=4, **options)
        randomise_up(model)
        with torch.no_grad():
            return model.eval()(**make_batch()).last_hidden_state

    base = hidden_with("pfeiffer")
    for other in (hidden_with("pfeiffer", original_ln_before=False),
                  hidden_with("pfeiffer", non_linearity="gelu"),
                  hidden_with("pfeiffer", scaling=2.0), hidden_with("parallel", scaling=1.0)):
        assert not torch.allclose(base, other, atol=1e-4)


def test_each_kind_defaults_to_adapterhubs_config_and_explicit_values_stay():
    assert adapters.kind_options("pfeiffer", None, "", 0.0) == {
        "original_ln_before": True, "non_linearity": "relu", "adapter_scaling": 1.0}
    assert adapters.kind_options("houlsby", None, "", 0.0) == {
        "original_ln_before": False, "non_linearity": "swish", "adapter_scaling": 1.0}
    assert adapters.kind_options("parallel", None, "", 0.0) == {
        "original_ln_before": False, "non_linearity": "relu", "adapter_scaling": 4.0}
    assert adapters.kind_options("pfeiffer", False, "gelu", 0.5) == {
        "original_ln_before": False, "non_linearity": "gelu", "adapter_scaling": 0.5}


def test_a_config_names_the_resolved_values_and_a_contradiction_is_a_config_error():
    cfg = config_files.make_config({"method": "adapter", "adapter_kind": "houlsby"}, "test")
    assert (cfg.original_ln_before, cfg.non_linearity, cfg.adapter_scaling) == \
        (False, "swish", 1.0)
    again = config_files.make_config(dataclasses.asdict(cfg), "test")
    assert again == cfg  # a saved config reads back as it was
    other = config_files.make_config({"method": "lora"}, "test")
    assert (other.original_ln_before, other.non_linearity, other.adapter_scaling) == \
        (None, "", 0.0)  # not an adapter run: nothing to resolve
    with pytest.raises(ConfigError, match="test: key 'original_ln_before' must be false or "
                                          "null with adapter_kind: parallel"):
        config_files.make_config({"method": "adapter", "adapter_kind": "parallel",
                                  "original_ln_before": True}, "test")
    with pytest.raises(ConfigError, match="key 'non_linearity' must be one of"):
        config_files.make_config({"method": "adapter", "non_linearity": "elu"}, "test")


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


@pytest.mark.parametrize("bad, words", [
    ({"kind": "lora"}, "adapter_kind must be one of"),
    ({"reduction": 0}, "reduction must be a positive int"),
    ({"non_linearity": "elu"}, "non_linearity must be one of"),
    ({"kind": "parallel", "original_ln_before": True}, "must be false or null")])
def test_bad_options_and_double_injection_are_errors(bad, words):
    with pytest.raises(ValueError, match=words):
        adapters.inject_adapters(make_tiny_bert(), **bad)
    model = make_tiny_bert()
    adapters.inject_adapters(model)
    with pytest.raises(ValueError, match="already holds adapters"):
        adapters.inject_adapters(model)
