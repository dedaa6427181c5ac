"""Tests for lora.py: identity at init, the slow twin, merge invariants, gradients, targets,
reading an adapter out of a run's weights, the peer (peft) on copied weights, and the bf16 frozen
base under autocast. PEFT's folder format is tests/test_peft.py's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_bert
from peft import LoraConfig, get_peft_model
from torch import nn

from inject import TARGET_PRESETS
from lora import (
    DoRALinear,
    LoRALinear,
    adapter_factors,
    inject_lora,
    load_factors,
    lora_layers,
    lora_plus_groups,
    merge_lora,
    unmerge_lora,
)
from model import cast_frozen

DEFAULT_TARGETS = TARGET_PRESETS["attention"]

FFN_TARGETS = (*DEFAULT_TARGETS, "intermediate.dense")
ALL_LINEARS = "query, key, value, attention.output.dense, intermediate.dense, output.dense"


def make_batch(seed: int = 0, batch: int = 3, length: int = 12) -> dict[str, torch.Tensor]:
    """Random ids with padding: row 1 keeps 7 tokens, row 2 keeps 4."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 40, (batch, length), generator=generator)  # (B, T)
    attention_mask = torch.ones(batch, length, dtype=torch.long)  # (B, T)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


def hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).last_hidden_state  # (B, T, H)


@torch.no_grad()
def randomise_b(model: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Make every adapter non-trivial (B = 0 at init leaves the model unchanged)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.copy_(torch.randn(param.shape, generator=generator) * std)


ALPHA = 32.0  # the alpha of every test that does not set its own


def lora_bert(targets=DEFAULT_TARGETS, rank: int = 4, alpha: float = ALPHA, **kwargs) -> nn.Module:
    model = make_tiny_bert()
    inject_lora(model, targets, rank=rank, alpha=alpha, **kwargs)
    randomise_b(model)
    return model.eval()


# --- the layer ------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [DEFAULT_TARGETS, ("query", "value"), FFN_TARGETS])
def test_injection_leaves_outputs_unchanged(targets):
    batch = make_batch()
    with torch.no_grad():
        expected = hidden(make_tiny_bert().eval(), batch)
        model = make_tiny_bert()
        inject_lora(model, targets, rank=8, alpha=ALPHA)
        assert torch.equal(hidden(model.eval(), batch), expected)


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("rank", [1, 4, 8])
def test_layer_equals_slow_twin(rank, rslora):
    torch.manual_seed(rank)
    layer = LoRALinear(nn.Linear(6, 5), rank=rank, alpha=8.0, rslora=rslora)
    nn.init.normal_(layer.lora_B)
    assert layer.scale == pytest.approx(8.0 / (math.sqrt(rank) if rslora else rank))
    x = torch.randn(2, 3, 6)  # (B, T, d_in)
    W, A, B = layer.base.weight, layer.lora_A, layer.lora_B
    slow = F.linear(x, W + layer.scale * B @ A, layer.base.bias)  # (B, T, d_out)
    torch.testing.assert_close(layer(x), slow)
    assert A.shape == (rank, 6) and B.shape == (5, rank)


def test_dropout_only_touches_the_adapter_path():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 5), rank=2, alpha=ALPHA, dropout=0.5).train()
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), layer.base(x))  # B = 0: dropout on the adapter input is invisible
    nn.init.normal_(layer.lora_B)
    assert not torch.allclose(layer(x), layer.eval()(x))  # now dropout in training changes it


@pytest.mark.parametrize("bad", [{"rank": 0}, {"alpha": 0.0}, {"dropout": 1.0}])
def test_layer_rejects_bad_options(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LoRALinear(nn.Linear(3, 3), **{"rank": 2, "alpha": ALPHA, **bad})


# --- merge / unmerge ------------------------------------------------------------------------


def test_merge_is_exact_idempotent_and_reversible():
    model, batch = lora_bert(FFN_TARGETS), make_batch()
    layers = lora_layers(model)
    originals = {name: layer.base.weight.clone() for name, layer in layers.items()}
    with torch.no_grad():
        unmerged = hidden(model, batch)
        assert not torch.allclose(unmerged, hidden(make_tiny_bert().eval(), batch), atol=1e-3)
        merge_lora(model)
        merged = hidden(model, batch)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    for name, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, originals[name] + layer.delta_weight())
        assert layer.merged is True
    once = {name: layer.base.weight.clone() for name, layer in layers.items()}
    merge_lora(model)
    model.train()
    model.eval()  # switching modes never merges or unmerges
    assert all(torch.equal(layer.base.weight, once[name]) for name, layer in layers.items())
    unmerge_lora(model)
    unmerge_lora(model)
    for name, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, originals[name], atol=1e-6, rtol=0)
        assert layer.merged is False
    with torch.no_grad():
        torch.testing.assert_close(hidden(model, batch), unmerged, atol=1e-5, rtol=1e-5)


def test_training_while_merged_is_an_error():
    model, batch = lora_bert(), make_batch()
    merge_lora(model)
    with torch.no_grad():
        hidden(model, batch)  # inference on a merged model is fine
    with pytest.raises(RuntimeError, match="unmerge"):
        hidden(model.train(), batch)
    unmerge_lora(model)
    hidden(model, batch).sum().backward()


# --- freezing and gradients -----------------------------------------------------------------


@pytest.mark.parametrize("targets", [DEFAULT_TARGETS, ("query", "value"), FFN_TARGETS])
@pytest.mark.parametrize("rank", [2, 8])
def test_gradients_reach_exactly_the_lora_factors(targets, rank):
    model = lora_bert(targets, rank=rank).train()
    hidden(model, make_batch()).pow(2).mean().backward()
    for name, param in model.named_parameters():
        is_lora = name.endswith((".lora_A", ".lora_B"))
        assert param.requires_grad == is_lora, name
        assert (param.grad is not None and param.grad.abs().sum() > 0) == is_lora, name
    fresh = make_tiny_bert()
    closed_form = sum(
        rank * (fresh.get_submodule(name).in_features + fresh.get_submodule(name).out_features)
        for name in lora_layers(model)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == closed_form


# --- targets --------------------------------------------------------------------------------


QKV = {"attention.self.query", "attention.self.key", "attention.self.value"}


@pytest.mark.parametrize(
    ("targets", "count", "layer_suffixes"),
    [
        (("query", "value"), 4, {"attention.self.query", "attention.self.value"}),
        (DEFAULT_TARGETS, 8, QKV | {"attention.output.dense"}),
        (FFN_TARGETS, 10, QKV | {"attention.output.dense", "intermediate.dense"}),
        (("output.dense",), 4, {"attention.output.dense", "output.dense"}),
    ],
)
def test_targets_match_dotted_suffixes(targets, count, layer_suffixes):
    model = make_tiny_bert()
    names = inject_lora(model, targets, rank=2, alpha=ALPHA)
    assert len(names) == count == len(lora_layers(model))
    assert {name.split(".", 3)[3] for name in names} == layer_suffixes  # drop "encoder.layer.<i>."
    assert all(isinstance(model.get_submodule(name), LoRALinear) for name in names)
    assert f"{names[0]}.base.weight" in model.state_dict()


@pytest.mark.parametrize("unknown", ["nope", "ery", "self", "layer.0.attention.self.query.base"])
def test_unknown_target_lists_the_existing_linears(unknown):
    with pytest.raises(ValueError, match=f"target\\(s\\) {unknown} match no nn.Linear") as info:
        inject_lora(make_tiny_bert(), ("query", unknown), rank=2, alpha=ALPHA)
    assert f"linears are: {ALL_LINEARS} (or a preset: attention, all-linear)" in str(info.value)


def test_double_injection_and_string_targets_are_errors():
    model = make_tiny_bert()
    inject_lora(model, DEFAULT_TARGETS, rank=2, alpha=ALPHA)
    with pytest.raises(ValueError, match="already holds 8 LoRA layers"):
        inject_lora(model, ("intermediate.dense",), rank=2, alpha=ALPHA)
    with pytest.raises(ValueError, match="sequence"):
        inject_lora(make_tiny_bert(), "query", rank=2, alpha=ALPHA)


# --- reading an adapter back -------------------------------------------------------------


def run_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a run saves: the trainable parameters by name (model.trained_state)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def test_adapter_factors_docstring_example():
    A, B = torch.randn(3, 32), torch.randn(32, 3)
    state = {
        "encoder.encoder.layer.0.attention.self.query.lora_A": A,
        "encoder.encoder.layer.0.attention.self.query.lora_B": B,
        "head.weight": torch.randn(5, 32),
        "head.bias": torch.randn(5),
    }
    factors = adapter_factors(state, "encoder.")
    assert list(factors) == ["encoder.layer.0.attention.self.query"]
    assert factors["encoder.layer.0.attention.self.query"][0] is A
    assert factors["encoder.layer.0.attention.self.query"][1] is B


def test_adapter_factors_names_and_shapes():
    model = lora_bert(("query",), rank=3)
    factors = adapter_factors(model.state_dict())  # base weights and all: only factors are read
    layers = lora_layers(model)
    assert (
        list(factors) == list(layers) == [f"encoder.layer.{i}.attention.self.query" for i in (0, 1)]
    )
    for name, (A, B) in factors.items():
        assert A.shape == (3, 32) and B.shape == (32, 3)
        assert torch.equal(A, layers[name].lora_A) and torch.equal(B, layers[name].lora_B)
    assert not any(key.endswith("merged") for key in model.state_dict())  # merge state: not saved


@pytest.mark.parametrize(
    ("drop", "shape", "words"),
    [
        ("lora_B", None, "lora_B is missing"),
        ("lora_A", None, "lora_A is missing"),
        (None, (2, 32), "lora_A (2, 32) and lora_B (32, 4) are not (r, d_in) and (d_out, r)"),
    ],
)
def test_adapter_factors_rejects_a_half_or_misshaped_pair(drop, shape, words):
    state = run_weights(lora_bert(("query",), rank=4))
    key = "encoder.layer.1.attention.self.query"
    if drop:
        del state[f"{key}.{drop}"]
    else:
        state[f"{key}.lora_A"] = torch.zeros(shape)
    with pytest.raises(ValueError) as info:
        adapter_factors(state)
    assert str(info.value) == f"{key}{'.' if drop else ': '}{words}"


@pytest.mark.parametrize("merged", [False, True])
def test_run_weights_round_trip_into_a_fresh_model(merged):
    """A merged model saves the same A and B as an unmerged one; read back and loaded into a
    fresh model (merged in turn, or not) they give the source's outputs."""
    source, batch = lora_bert(FFN_TARGETS, rslora=True), make_batch()
    before = run_weights(source)
    if merged:
        merge_lora(source)
    assert all(torch.equal(p, before[name]) for name, p in run_weights(source).items())
    target = make_tiny_bert()
    inject_lora(target, FFN_TARGETS, rank=4, alpha=ALPHA, rslora=True)
    load_factors(target, adapter_factors(run_weights(source)))
    if merged:
        merge_lora(target)
    with torch.no_grad():
        assert torch.equal(hidden(target.eval(), batch), hidden(source, batch))


def test_load_factors_reports_missing_unexpected_misshaped_and_merged_layers():
    factors = adapter_factors(run_weights(lora_bert(rank=4)))
    name = "encoder.layer.1.attention.self.key"
    del factors[name]
    factors["encoder.layer.5.attention.self.key"] = (torch.zeros(4, 32), torch.zeros(32, 4))
    target = make_tiny_bert()
    inject_lora(target, DEFAULT_TARGETS, rank=8, alpha=ALPHA)
    with pytest.raises(ValueError) as info:
        load_factors(target, factors)
    message = str(info.value)
    assert f"missing {name}" in message
    assert "unexpected encoder.layer.5.attention.self.key" in message
    assert (
        "encoder.layer.0.attention.self.query has A (4, 32) and B (32, 4), "
        "expected (8, 32) and (32, 8)" in message
    )
    merged = lora_bert(rank=4)
    merge_lora(merged)
    with pytest.raises(ValueError, match="attention.self.query is merged"):
        load_factors(merged, adapter_factors(run_weights(merged)))
    with pytest.raises(ValueError, match="no LoRA layers"):
        load_factors(make_tiny_bert(), {})


# --- bf16 frozen base -----------------------------------------------------------------------


def test_bf16_base_under_cpu_autocast():
    batch = make_batch()
    reference = lora_bert(FFN_TARGETS)
    model = lora_bert(FFN_TARGETS).train()
    cast_frozen(model, torch.bfloat16)
    for name, param in model.named_parameters():
        kept = name.endswith((".lora_A", ".lora_B")) or "LayerNorm" in name  # LayerNorms: fp32
        expected = torch.float32 if kept else torch.bfloat16
        assert param.dtype == expected, name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hidden(model, batch)
    out.float().pow(2).mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.dtype == torch.float32, name
            assert param.grad.abs().sum() > 0, name
    with torch.no_grad():
        expected = hidden(reference, batch)
    # bf16 rounding moved outputs by ~0.03 when written; the adapter itself moves them by ~3.
    torch.testing.assert_close(out.detach().float(), expected, atol=0.08, rtol=0)


# --- presets: all-linear ------------------------------------------------------------------


def test_all_linear_is_every_linear_of_a_layer_as_peft_names_them():
    ours = make_tiny_bert()
    names = inject_lora(ours, ["all-linear"], rank=4, alpha=ALPHA)
    assert [name.split("layer.0.")[1] for name in names if ".layer.0." in name] == [
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense"]
    theirs = get_peft_model(make_tiny_bert(), LoraConfig(r=4, target_modules="all-linear"))
    peft_names = {n.removeprefix("base_model.model.") for n, m in theirs.named_modules()
                  if type(m).__name__ == "Linear" and hasattr(m, "lora_A")}
    assert set(names) == peft_names


def test_all_linear_equals_peft_on_copied_weights():
    ours, batch = make_tiny_bert(), make_batch()
    inject_lora(ours, ["all-linear"], rank=4, alpha=8.0)
    randomise_b(ours)
    theirs = get_peft_model(make_tiny_bert(), LoraConfig(r=4, lora_alpha=8,
                                                          target_modules="all-linear"))
    copy_factors(ours, theirs)
    with torch.no_grad():
        torch.testing.assert_close(hidden(theirs.eval(), batch), hidden(ours.eval(), batch))


def copy_factors(ours: nn.Module, theirs: nn.Module) -> None:
    """Our adapters (and DoRA magnitudes) into a peft model of the same targets."""
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            module = theirs.base_model.model.get_submodule(name)
            module.lora_A["default"].weight.copy_(layer.lora_A)
            module.lora_B["default"].weight.copy_(layer.lora_B)
            if isinstance(layer, DoRALinear):
                module.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)


# --- DoRA -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 4])
def test_dora_layer_equals_its_slow_twin_and_starts_as_the_identity(rank):
    torch.manual_seed(rank)
    layer = DoRALinear(nn.Linear(6, 5), rank=rank, alpha=8.0)
    x = torch.randn(2, 3, 6)  # (B, T, d_in)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)  # f = 1, B = 0
    nn.init.normal_(layer.lora_B)
    with torch.no_grad():
        layer.lora_magnitude.mul_(torch.linspace(0.5, 1.5, 5))
    W, A, B, m = layer.base.weight, layer.lora_A, layer.lora_B, layer.lora_magnitude
    adapted = W + layer.scale * B @ A  # (d_out, d_in)
    direction = adapted / adapted.norm(dim=1, keepdim=True)  # unit rows
    slow = F.linear(x, m[:, None] * direction, layer.base.bias)  # the paper's W'
    torch.testing.assert_close(layer(x), slow)


def test_dora_norm_is_a_constant_in_the_backward_pass():
    """PEFT's and the paper's choice (Sec. 4.3): gradients flow to m, A and B, not through the
    norm; the twin with a detached norm has the same gradients."""
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(6, 5), rank=2, alpha=ALPHA)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 6)
    layer(x).pow(2).sum().backward()
    A = layer.lora_A.detach().clone().requires_grad_()
    B = layer.lora_B.detach().clone().requires_grad_()
    m = layer.lora_magnitude.detach().clone().requires_grad_()
    adapted = layer.base.weight + layer.scale * B @ A
    slow = F.linear(x, m[:, None] * adapted / adapted.norm(dim=1, keepdim=True).detach(),
                    layer.base.bias)
    slow.pow(2).sum().backward()
    for ours, twin in ((layer.lora_A, A), (layer.lora_B, B), (layer.lora_magnitude, m)):
        torch.testing.assert_close(ours.grad, twin.grad)


def dora_bert(targets=DEFAULT_TARGETS, magnitude: float = 1.2) -> nn.Module:
    """The tiny BERT with DoRA (r 4, alpha 8), random B factors and rescaled magnitudes."""
    model = make_tiny_bert()
    inject_lora(model, targets, rank=4, alpha=8.0, dora=True)
    randomise_b(model)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_magnitude.mul_(magnitude)
    return model


@pytest.mark.parametrize("targets", [DEFAULT_TARGETS, ("all-linear",)])
def test_dora_equals_peft_on_copied_weights(targets):
    ours, batch = dora_bert(targets), make_batch()
    theirs = get_peft_model(make_tiny_bert(), LoraConfig(
        r=4, lora_alpha=8, use_dora=True,
        target_modules="all-linear" if targets == ("all-linear",) else list(targets)))
    copy_factors(ours, theirs)
    with torch.no_grad():
        expected = hidden(theirs.eval(), batch)
        assert not torch.allclose(hidden(make_tiny_bert().eval(), batch), expected, atol=1e-3)
        torch.testing.assert_close(hidden(ours.eval(), batch), expected, atol=1e-5, rtol=1e-5)


def test_dora_merge_and_unmerge_are_exact_and_idempotent():
    model, batch = dora_bert(), make_batch()
    originals = {n: layer.base.weight.clone() for n, layer in lora_layers(model).items()}
    with torch.no_grad():
        unmerged = hidden(model.eval(), batch)
        merge_lora(model)
        merge_lora(model)
        torch.testing.assert_close(hidden(model, batch), unmerged, atol=1e-5, rtol=1e-5)
        unmerge_lora(model)
        unmerge_lora(model)
        torch.testing.assert_close(hidden(model, batch), unmerged, atol=1e-5, rtol=1e-5)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base.weight, originals[name], atol=1e-6, rtol=1e-6)


# --- LoRA+ ----------------------------------------------------------------------------------


def test_lora_plus_puts_every_b_factor_in_its_own_group_at_ratio_times_lr():
    model = make_tiny_bert()
    inject_lora(model, DEFAULT_TARGETS, rank=2, alpha=ALPHA)
    [group] = lora_plus_groups(model, lr=1e-3, ratio=16.0, weight_decay=0.01)
    assert group["lr"] == pytest.approx(1.6e-2) and group["weight_decay"] == 0.01
    bs = [layer.lora_B for layer in lora_layers(model).values()]
    assert len(group["params"]) == len(bs) and all(p is b for p, b in zip(group["params"], bs))
    assert lora_plus_groups(model, 1e-3, 0.0, 0.01) == []  # 0 and 1: plain LoRA
    assert lora_plus_groups(model, 1e-3, 1.0, 0.01) == []
