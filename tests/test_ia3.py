"""ia3.py: the three vectors of IA3, held equal to PEFT's IA3 on copied weights (its export read
by PeftModel is tests/test_peft.py's)."""

from __future__ import annotations

import torch
from conftest import make_tiny_bert
from peft import IA3Config, get_peft_model

import ia3


def make_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[2, 6:] = 0
    return {"input_ids": torch.randint(5, 40, (3, 10), generator=generator),
            "attention_mask": mask}


def hidden(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**make_batch()).last_hidden_state


@torch.no_grad()
def randomise(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for layer in ia3.ia3_layers(model).values():
        layer.ia3_scale.copy_(1 + 0.5 * torch.randn(layer.ia3_scale.shape, generator=generator))


def peft_ia3(names: list[str]):
    feedforward = [n for n in names if n.endswith(("layer.0.output.dense",
                                                   "layer.1.output.dense"))]
    return get_peft_model(make_tiny_bert(), IA3Config(target_modules=names,
                                                      feedforward_modules=feedforward))


def test_keys_values_and_feed_forward_activations_are_rescaled_from_one():
    model = make_tiny_bert()
    names = ia3.inject_ia3(model)
    assert [n.split("layer.0.")[1] for n in names if ".layer.0." in n] == [
        "attention.self.key", "attention.self.value", "output.dense"]
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(".ia3_scale") for n in trained)
    assert sum(trained.values()) == 2 * (2 * 32 + 64)  # L (2 H + I)
    torch.testing.assert_close(hidden(model), hidden(make_tiny_bert()), rtol=0, atol=0)


def test_ia3_equals_peft_on_copied_vectors():
    ours = make_tiny_bert()
    names = ia3.inject_ia3(ours)
    randomise(ours)
    theirs = peft_ia3(names)
    with torch.no_grad():
        for name, layer in ia3.ia3_layers(ours).items():
            vector = theirs.base_model.model.get_submodule(name).ia3_l["default"]
            vector.copy_(layer.ia3_scale.view(vector.shape))
    expected = hidden(theirs)
    assert not torch.allclose(expected, hidden(make_tiny_bert()), atol=1e-3)
    torch.testing.assert_close(hidden(ours), expected, atol=1e-6, rtol=1e-6)
