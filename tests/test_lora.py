"""Tests for lora.py: identity at init, the slow twin, merge invariants, gradients, targets,
reading an adapter out of a run's weights, PEFT round trips both ways, and the bf16 frozen base
under autocast."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_bert
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from torch import nn

from lora import (
    DEFAULT_TARGETS,
    PEFT_WEIGHTS,
    LoRALinear,
    _linear_suffixes,
    adapter_factors,
    cast_frozen,
    export_peft,
    import_peft,
    inject_lora,
    load_factors,
    lora_layers,
    merge_lora,
    unmerge_lora,
)

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


def lora_bert(targets=DEFAULT_TARGETS, rank: int = 4, **kwargs) -> nn.Module:
    model = make_tiny_bert()
    inject_lora(model, targets, rank=rank, **kwargs)
    randomise_b(model)
    return model.eval()


# --- the layer ------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [DEFAULT_TARGETS, ("query", "value"), FFN_TARGETS])
def test_injection_leaves_outputs_unchanged(targets):
    batch = make_batch()
    with torch.no_grad():
        expected = hidden(make_tiny_bert().eval(), batch)
        model = make_tiny_bert()
        inject_lora(model, targets, rank=8)
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
    layer = LoRALinear(nn.Linear(6, 5), rank=2, dropout=0.5).train()
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), layer.base(x))  # B = 0: dropout on the adapter input is invisible
    nn.init.normal_(layer.lora_B)
    assert not torch.allclose(layer(x), layer.eval()(x))  # now dropout in training changes it


@pytest.mark.parametrize("bad", [{"rank": 0}, {"alpha": 0.0}, {"dropout": 1.0}])
def test_layer_rejects_bad_options(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LoRALinear(nn.Linear(3, 3), **bad)


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
    names = inject_lora(model, targets, rank=2)
    assert len(names) == count == len(lora_layers(model))
    assert {name.split(".", 3)[3] for name in names} == layer_suffixes  # drop "encoder.layer.<i>."
    assert all(isinstance(model.get_submodule(name), LoRALinear) for name in names)
    assert f"{names[0]}.base.weight" in model.state_dict()


@pytest.mark.parametrize("unknown", ["nope", "ery", "self", "layer.0.attention.self.query.base"])
def test_unknown_target_lists_the_existing_linears(unknown):
    with pytest.raises(ValueError, match=f"target\\(s\\) {unknown} match no nn.Linear") as info:
        inject_lora(make_tiny_bert(), ("query", unknown))
    assert str(info.value).endswith(ALL_LINEARS)


def test_linear_suffixes_docstring_example():
    names = [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.output.dense",
        "encoder.layer.1.attention.self.query",
        "encoder.layer.1.attention.output.dense",
        "encoder.layer.1.output.dense",
    ]
    assert _linear_suffixes(names) == ["query", "attention.output.dense", "output.dense"]


def test_double_injection_and_string_targets_are_errors():
    model = make_tiny_bert()
    inject_lora(model)
    with pytest.raises(ValueError, match="already holds 8 LoRA layers"):
        inject_lora(model, ("intermediate.dense",))
    with pytest.raises(ValueError, match="sequence"):
        inject_lora(make_tiny_bert(), "query")


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
    inject_lora(target, FFN_TARGETS, rank=4, rslora=True)
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
    inject_lora(target, rank=8)
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


# --- PEFT interchange -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "rslora", "alpha"),
    [(DEFAULT_TARGETS, False, 32.0), (("query", "value"), True, 8.0), (FFN_TARGETS, False, 4.0)],
)
def test_export_peft_is_read_by_peft(tmp_path, targets, rslora, alpha):
    model, batch = lora_bert(targets, rank=4, alpha=alpha, rslora=rslora), make_batch()
    export_peft(model, tmp_path, base_model_name_or_path="tiny-bert")
    peft_model = PeftModel.from_pretrained(make_tiny_bert(), tmp_path).eval()
    with torch.no_grad():
        expected = hidden(model, batch)
        assert not torch.allclose(hidden(make_tiny_bert().eval(), batch), expected, atol=1e-3)
        torch.testing.assert_close(hidden(peft_model, batch), expected, atol=1e-5, rtol=1e-5)


def test_export_peft_writes_peft_key_names(tmp_path):
    peft_model = get_peft_model(make_tiny_bert(), LoraConfig(r=4, target_modules=["query"]))
    peft_model.save_pretrained(tmp_path / "peft")
    export_peft(lora_bert(("query",)), tmp_path / "ours", base_model_name_or_path="tiny-bert")
    theirs, ours = (load_file_keys(tmp_path / sub / PEFT_WEIGHTS) for sub in ("peft", "ours"))
    assert ours == theirs
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] is None


def load_file_keys(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("use_rslora", [False, True])
def test_import_peft_reproduces_a_real_peft_model(tmp_path, use_rslora):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=use_rslora)
    peft_model = get_peft_model(make_tiny_bert(), config)
    randomise_b(peft_model, seed=2)
    peft_model.save_pretrained(tmp_path)
    model, batch = make_tiny_bert(), make_batch()
    names = import_peft(model, tmp_path)
    assert len(names) == 4 and all(name.endswith(("query", "value")) for name in names)
    assert lora_layers(model)[names[0]].scale == pytest.approx(8 / (2 if use_rslora else 4))
    with torch.no_grad():
        expected = hidden(peft_model.eval(), batch)
        assert not torch.allclose(hidden(make_tiny_bert().eval(), batch), expected, atol=1e-3)
        torch.testing.assert_close(hidden(model.eval(), batch), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("peft_type", "IA3"),
        ("fan_in_fan_out", True),
        ("bias", "all"),
        ("use_dora", True),
        ("rank_pattern", {"query": 8}),
        ("alpha_pattern", {"value": 2}),
        ("init_lora_weights", "pissa"),
        ("target_modules", "all-linear"),
    ],
)
def test_import_peft_rejects_unsupported_options(tmp_path, field, value):
    get_peft_model(make_tiny_bert(), LoraConfig(r=4, target_modules=["query"])).save_pretrained(
        tmp_path
    )
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {field: value}))
    model = make_tiny_bert()
    with pytest.raises(ValueError, match=field):
        import_peft(model, tmp_path)
    assert not lora_layers(model)  # rejected before injecting anything


# --- bf16 frozen base -----------------------------------------------------------------------


def test_bf16_base_under_cpu_autocast():
    batch = make_batch()
    reference = lora_bert(FFN_TARGETS)
    model = lora_bert(FFN_TARGETS).train()
    cast_frozen(model, torch.bfloat16)
    for name, param in model.named_parameters():
        expected = torch.float32 if name.endswith((".lora_A", ".lora_B")) else torch.bfloat16
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
