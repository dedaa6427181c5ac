"""prefix.py: the fused attention equals its written-out twin, the whole encoder equals PEFT's
PREFIX_TUNING on copied prefixes (with and without a projection), positions start after the
prefix, and only the prefixes train."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_bert
from peft import PrefixTuningConfig, get_peft_model

import model
import prefix
from runs import config_files

P = 4  # prefix length of these tests; the tiny BERT has L = 2 layers of H = 32, 4 heads


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 9, dtype=torch.long)  # (B, T)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": torch.randint(5, 40, (3, 9), generator=generator),
            "attention_mask": mask}


def hidden(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**make_batch()).last_hidden_state  # (B, T, H)


@pytest.mark.parametrize("mask_kind", ["none", "boolean", "additive"])
def test_fused_attention_equals_the_written_out_twin(mask_kind):
    generator = torch.Generator().manual_seed(1)
    B, h, T, d = 3, 4, 6, 8
    q, k, v = (torch.randn(B, h, T, d, generator=generator, dtype=torch.float64)
               for _ in range(3))
    prefix_k, prefix_v = (torch.randn(h, P, d, generator=generator, dtype=torch.float64)
                          for _ in range(2))
    keep = torch.ones(B, 1, 1, T, dtype=torch.bool)
    keep[1, ..., 4:] = False
    mask = {"none": None, "boolean": keep,
            "additive": torch.zeros(B, 1, 1, T, dtype=torch.float64).masked_fill(~keep, -1e9)
            }[mask_kind]
    fused = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([prefix_k.expand(B, -1, -1, -1), k], 2),
        torch.cat([prefix_v.expand(B, -1, -1, -1), v], 2),
        attn_mask=prefix.extend_mask(mask, P), scale=d ** -0.5)
    slow = prefix.attention_reference(q, k, v, prefix_k, prefix_v, mask, d ** -0.5)
    torch.testing.assert_close(fused, slow, rtol=1e-12, atol=1e-12)
    # a padded key gets no weight, while every prefix gets some
    weights = torch.softmax(q[1] @ torch.cat([prefix_k, k[1]], 1).transpose(-1, -2), -1)
    assert (weights[..., :P] > 0).all()


def peft_twin(ours: torch.nn.Module, projection: int) -> torch.nn.Module:
    """PEFT's PREFIX_TUNING on a bare copy of the tiny BERT, its prompt encoder holding our
    prefixes (and MLP)."""
    config = PrefixTuningConfig(num_virtual_tokens=P, task_type="FEATURE_EXTRACTION",
                                prefix_projection=bool(projection),
                                encoder_hidden_size=projection or 32)
    theirs = get_peft_model(make_tiny_bert(), config)
    encoder = theirs.prompt_encoder["default"]
    prefixes = ours.encoder.layer[0].attention.self.prefixes
    with torch.no_grad():
        if projection:
            encoder.embedding.weight.copy_(prefixes.embedding.weight)
            for i in (0, 2):
                encoder.transform[i].load_state_dict(prefixes.mlp[i].state_dict())
        else:  # PEFT keeps (P, L 2 H), layer l's keys at 2 l and values at 2 l + 1
            encoder.embedding.weight.copy_(prefixes().permute(2, 0, 1, 3).reshape(P, -1))
    return theirs


@pytest.mark.parametrize("projection", [0, 8])
def test_the_encoder_equals_peft_prefix_tuning_on_copied_prefixes(projection):
    torch.manual_seed(2)
    ours = make_tiny_bert()
    prefix.inject_prefix(ours, P, projection)
    expected = hidden(peft_twin(ours, projection))
    assert not torch.allclose(expected, hidden(make_tiny_bert()), atol=1e-2)
    torch.testing.assert_close(hidden(ours), expected, rtol=1e-5, atol=1e-5)


def test_eager_attention_and_its_additive_mask_give_the_same_encoder():
    torch.manual_seed(3)
    sdpa = make_tiny_bert()
    prefix.inject_prefix(sdpa, P)
    eager = make_tiny_bert()
    eager.config._attn_implementation = "eager"  # BERT then hands over an additive mask
    prefix.inject_prefix(eager, P)
    eager.load_state_dict(sdpa.state_dict())
    torch.testing.assert_close(hidden(eager), hidden(sdpa), rtol=1e-5, atol=1e-5)


def test_windows_leave_the_prefix_its_positions():
    values = {"method": "prefix", "prefix_length": P, "gpu": -1}
    encoder = make_tiny_bert()  # 64 positions
    assert model.window_length(config_files.make_config({**values, "max_length": 60}, "t"),
                               encoder) == 64 - P
    assert model.window_length(config_files.make_config({**values, "max_length": 32}, "t"),
                               encoder) == 32
    prefix.inject_prefix(encoder, P)
    encoder.eval()(input_ids=torch.randint(5, 40, (1, 64 - P)))  # the longest window fits


@pytest.mark.parametrize("projection", [0, 8])
def test_only_the_prefixes_train_and_a_step_changes_nothing_else(projection):
    model = make_tiny_bert()
    prefixes = prefix.inject_prefix(model, P, projection)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".prefixes." in n for n in trained)
    assert sum(p.numel() for p in prefixes.parameters()) == \
        prefix.prefix_count(2, 32, P, projection)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model.train()(**make_batch()).last_hidden_state  # (B, T, H), LayerNorm's unit scale
    (out * torch.linspace(-1, 1, 32)).sum().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trained


def test_a_second_injection_is_refused():
    model = make_tiny_bert()
    prefix.inject_prefix(model, P)
    with pytest.raises(ValueError, match="already holds prefixes"):
        prefix.inject_prefix(model, P)
    with pytest.raises(TypeError, match="boolean or additive"):
        prefix.extend_mask(torch.ones(1, 1, 1, 3, dtype=torch.long), P)
