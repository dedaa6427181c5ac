"""plain.py: every method of the table either folds into a plain BERT encoder that computes what
its tagger did, or says in one line why it cannot and what works instead."""

from __future__ import annotations

import pytest
import test_methods
import torch
from test_methods import CASES, IDS, batch, built, case_config
from transformers import BertModel

import export
import methods
from runs import config_files

bench = test_methods.bench  # the conformance suite's corpus and source runs (a fixture)


def variant_config(name: str, variant: int):
    return config_files.make_config({**methods.METHODS[name].variants[variant], "method": name,
                                     "name": f"{name}-{variant}"}, "test")


EXPORTABLE = [case for case in CASES if not export.refusal(variant_config(*case))]
REFUSED = [case for case in CASES if case not in EXPORTABLE]


def test_every_method_says_whether_and_how_it_exports():
    for name, method in methods.METHODS.items():
        assert method.to_plain is not None or method.not_plain is not None, name
    for name, variant in REFUSED:
        reason = export.refusal(variant_config(name, variant))
        assert "\n" not in reason and "predict.py" in reason, (name, reason)
    assert {name for name, _ in EXPORTABLE} >= {"full", "lora", "ia3", "bitfit", "fusion"}
    assert ("adapter", 0) in REFUSED


@torch.no_grad()
def move_what_trains(model: torch.nn.Module, seed: int = 3) -> None:
    """Every trainable encoder parameter moved off its start, as training would move it (LoRA's
    B starts at zero, IA3's vectors at one: a fold of the start would prove nothing), and every
    bias, which BERT's init leaves at zero (a fold that forgot one would pass)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if param.requires_grad or name.endswith("bias"):
            param.add_(0.2 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("name, variant", EXPORTABLE,
                         ids=[IDS[CASES.index(case)] for case in EXPORTABLE])
def test_the_plain_encoder_computes_what_the_tagger_did(bench, tiny_encoder, name, variant):
    cfg = case_config(bench, name, variant)
    tagger, _ = built(cfg, tiny_encoder)
    encoder = tagger.encoder.eval()
    move_what_trains(encoder)
    with torch.no_grad():
        expected = encoder(**batch()).last_hidden_state  # (B, T, H)
        methods.METHODS[name].to_plain(encoder, cfg)
        found = encoder(**batch()).last_hidden_state
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    # Nothing is left but BERT's own modules and weights.
    assert {type(m) for m in encoder.modules() if "Linear" in type(m).__name__} == \
        {torch.nn.Linear}
    assert set(encoder.state_dict()) == set(BertModel(encoder.config,
                                                      add_pooling_layer=False).state_dict())
