"""inject.py: which linears a target names (PEFT's rule, the presets) and the swap."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_bert
from torch import nn

import inject


def test_presets_expand_in_order_and_each_name_once():
    assert inject.expand_targets(["attention"]) == ["query", "key", "value",
                                                    "attention.output.dense"]
    assert inject.expand_targets(["value", "all-linear"]) == [
        "value", "query", "key", "attention.output.dense", "intermediate.dense", "output.dense"]
    assert inject.expand_targets(["query"]) == ["query"]


@pytest.mark.parametrize("targets, per_layer", [
    (["attention"], ["attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"]),
    (["all-linear"], ["attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense", "intermediate.dense", "output.dense"]),
    (["output.dense"], ["attention.output.dense", "output.dense"]),  # PEFT's suffix rule
    (["encoder.layer.1.attention.self.value"], []),
])
def test_linear_names_follow_the_suffix_rule(targets, per_layer):
    names = inject.linear_names(make_tiny_bert(), targets)
    assert [n.split("layer.0.")[1] for n in names if ".layer.0." in n] == per_layer
    assert all(isinstance(make_tiny_bert().get_submodule(n), nn.Linear) for n in names)


def test_the_formula_shapes_are_the_models():
    model = make_tiny_bert(hidden=32, intermediate=64)
    for suffix, (d_in, d_out) in inject.layer_linear_shapes(32, 64).items():
        linear = model.get_submodule(f"encoder.layer.0.{suffix}")
        assert (linear.in_features, linear.out_features) == (d_in, d_out)
    assert len(inject.targeted_shapes(["all-linear"], 32, 64)) == 6


def test_linear_suffixes_docstring_example():
    names = [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.output.dense",
        "encoder.layer.1.attention.self.query",
        "encoder.layer.1.attention.output.dense",
        "encoder.layer.1.output.dense",
    ]
    assert inject.linear_suffixes(names) == ["query", "attention.output.dense", "output.dense"]


def test_wrap_linears_swaps_each_for_the_factorys_module_and_refuses_a_wrapped_one():
    class Doubled(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return 2 * self.base(x)

    model = make_tiny_bert()
    names = inject.linear_names(model, ["query"])
    seen = []
    inject.wrap_linears(model, names, lambda name, linear: seen.append(name) or Doubled(linear))
    assert seen == names and all(isinstance(model.get_submodule(n), Doubled) for n in names)
    x = torch.randn(2, 32)
    layer = model.get_submodule(names[0])
    torch.testing.assert_close(layer(x), 2 * layer.base(x))
    with pytest.raises(TypeError, match="not an nn.Linear; was it wrapped already"):
        inject.wrap_linears(model, names, lambda name, linear: linear)
