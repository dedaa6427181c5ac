"""selective.py: BitFit, LayerNorm tuning and partial fine-tuning train exactly their part of the
encoder, a training step changes nothing else, and LayerNorm tuning equals PEFT's LN_TUNING on
copied weights."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_bert
from peft import LNTuningConfig, get_peft_model

import selective


def one_step(model) -> set[str]:
    """The names of the parameters one SGD step on a random batch changes."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(input_ids=torch.randint(5, 40, (2, 8))).last_hidden_state  # (B, T, H)
    (out * torch.linspace(-1, 1, 32)).sum().backward()  # LayerNorm fixes the outputs' scale
    optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_bitfit_trains_only_biases_and_a_step_changes_nothing_else():
    model = make_tiny_bert()
    trained = selective.train_only(model, selective.is_bias)
    assert trained and all(n.endswith(".bias") for n in trained)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trained)
    assert any("LayerNorm.bias" in n for n in trained)  # LayerNorm shifts too
    assert sum(p.numel() for n, p in model.named_parameters() if n in trained) == \
        2 * (7 * 32 + 64) + 32  # L (7 H + I) + H
    changed = one_step(model)
    assert changed and changed <= set(trained)


def test_layernorm_tuning_trains_every_layernorm_and_nothing_else():
    model = make_tiny_bert()
    trained = selective.train_only(model, selective.is_layernorm)
    assert len(trained) == 2 * (2 * 2 + 1)  # weight and bias of 2 L + 1 LayerNorms
    assert sum(p.numel() for n, p in model.named_parameters() if n in trained) == 2 * 32 * 5
    assert one_step(model) == set(trained)


def test_layernorm_tuning_equals_peft_ln_tuning_on_copied_weights():
    ours = make_tiny_bert()
    selective.train_only(ours, selective.is_layernorm)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(
                    len(name))) * 0.3)
    theirs = get_peft_model(make_tiny_bert(), LNTuningConfig(target_modules=["LayerNorm"],
                                                             task_type="FEATURE_EXTRACTION"))
    peft_trained = {n for n, p in theirs.named_parameters() if p.requires_grad}
    assert len(peft_trained) == 10  # the same ten tensors train in PEFT
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if param.requires_grad:  # PEFT keeps a trained copy of each LayerNorm
                module, part = name.rsplit(".", 1)
                copy = theirs.base_model.model.get_submodule(module).ln_tuning_layers["default"]
                getattr(copy, part).copy_(param)
    ids = torch.randint(5, 40, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs.eval()(input_ids=ids).last_hidden_state
        assert not torch.allclose(expected, make_tiny_bert().eval()(input_ids=ids)
                                  .last_hidden_state, atol=1e-2)
        torch.testing.assert_close(ours.eval()(input_ids=ids).last_hidden_state, expected)


@pytest.mark.parametrize("k", [1, 2])
def test_partial_trains_the_top_k_layers_whole(k):
    model = make_tiny_bert()
    trained = selective.train_only(model, selective.top_layers(2, k))
    assert {n.split(".")[2] for n in trained} == {str(i) for i in range(2 - k, 2)}
    assert {n for n, _ in model.named_parameters() if n.startswith("encoder.layer.1.")} <= \
        set(trained)
    assert not any(n.startswith("embeddings.") for n in trained)
    assert one_step(model) == set(trained)


@pytest.mark.parametrize("k", [0, 3])
def test_partial_outside_the_encoders_layers_is_named(k):
    with pytest.raises(ValueError, match=f"between 1 and the encoder's 2 layers, got {k}"):
        selective.top_layers(2, k)
