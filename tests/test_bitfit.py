"""bitfit.py: exactly the biases train, and a training step changes nothing else."""

from __future__ import annotations

import torch
from conftest import make_tiny_bert

import bitfit


def test_only_biases_train_and_a_step_changes_nothing_else():
    model = make_tiny_bert()
    trained = bitfit.freeze_all_but_biases(model)
    assert trained and all(n.endswith(".bias") for n in trained)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trained)
    assert any("LayerNorm.bias" in n for n in trained)  # LayerNorm shifts too
    assert sum(p.numel() for n, p in model.named_parameters() if n in trained) == \
        2 * (7 * 32 + 64) + 32  # L (7 H + I) + H
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    input_ids = torch.randint(5, 40, (2, 8))
    model(input_ids=input_ids).last_hidden_state.pow(2).mean().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trained)
