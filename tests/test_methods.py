"""The conformance suite: every method of the table (methods.py), in every variant it declares,
through the same checks. A new method gets them by being in the table.

- identity at initialisation, where the method claims it;
- exactly the method's parameters train (its `trainable` names), as many as its formula says;
- a few epochs on a tiny corpus lower the loss and move what the method trains;
- save, reload and predict.py reproduce the run's test predictions;
- the bf16 frozen base (model.cast_frozen) trains under autocast and stays close to fp32;
- each of its own keys changes its runs' fingerprint, another method's keys do not.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import write_corpus

import config
import methods
import model
import predict
import train
from comparison.fingerprint import digest, run_inputs
from corpora.sources import Origin
from runs import config_files
from runs.folders import load_json, run_dir, source_dirs

LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
CASES = [(name, i) for name, method in methods.METHODS.items()
         for i in range(len(method.variants))]
# The source runs a fusion variant names (`<prefix>-a`, `<prefix>-b`): every method that can feed
# a fusion, in its first variant, and parallel adapters. prefix -> (method, settings)
SOURCE_RUNS = {**{m.name: (m.name, m.variants[0]) for m in methods.METHODS.values()
                  if m.source_kind is not None},
               "parallel": ("adapter", {"adapter_kind": "parallel"})}
IDS = [f"{name}-{i}" for name, i in CASES]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_encoder) -> dict:
    """A tiny corpus, the shared settings, and two finished source runs (`<prefix>-a`,
    `<prefix>-b`) of each of SOURCE_RUNS, in the output folder every case trains into."""
    root = tmp_path_factory.mktemp("methods")
    shared = {"model": str(tiny_encoder), "dataset": str(write_corpus(root / "corpus")),
              "gpu": -1, "epochs": 3, "batch_size": 8, "dropout": 0.0, "warmup_ratio": 0.0,
              "lr_scheduler_type": "constant", "output_dir": str(root / "out"),
              "log_every": 1000}
    for prefix, (method, settings) in SOURCE_RUNS.items():
        for suffix, seed in (("a", 1), ("b", 2)):
            source = config_files.make_config(
                {**shared, **settings, "name": f"{prefix}-{suffix}", "method": method,
                 "epochs": 1, "lr": 1e-2, "seed": seed}, "source")
            train.train(source)
            # as the sweep would find it: beside the fusion's runs, at the fusion's seed
            (run_dir(source).rename(run_dir(dataclasses.replace(source, seed=42))))
    return shared


def case_config(bench: dict, name: str, variant: int, **more) -> config.Config:
    values = {**bench, **methods.METHODS[name].variants[variant], "method": name,
              "name": f"{name}-{variant}", **more}
    return config_files.make_config(values, "test")


def built(cfg: config.Config, tiny_encoder: Path) -> tuple[model.Tagger, torch.nn.Module]:
    """A tagger of `cfg` on the tiny encoder, and a bare copy of the encoder."""
    bare = model.load_encoder(str(tiny_encoder))[0].eval()
    encoder = model.load_encoder(str(tiny_encoder))[0]
    sources = source_dirs(run_dir(cfg), cfg.seed, methods.sources_of(cfg))
    return model.build_tagger(cfg, LABELS, encoder, sources)[0], bare


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 40, (3, 12), generator=generator)  # (B, T)
    attention_mask = torch.ones(3, 12, dtype=torch.long)
    attention_mask[1, 7:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def test_every_method_is_declared_whole():
    owners = {}
    for method in methods.METHODS.values():
        assert method.default_lr > 0 and method.trains and method.variants
        assert all(key in config.Config.__dataclass_fields__ for key in method.keys)
        for key in method.keys:
            assert owners.setdefault(key, method.name) == method.name, f"{key}: two owners"
        assert set(method.choices) <= set(method.keys)
        assert (method.export is None) == (method.export_folder == "")
        assert (method.sources_key is None) or method.sources_key in method.keys


@pytest.mark.parametrize("name, variant", CASES, ids=IDS)
def test_identity_at_init(bench, tiny_encoder, name, variant):
    if not methods.METHODS[name].identity_at_init:
        pytest.skip(f"{name} does not claim it")
    tagger, bare = built(case_config(bench, name, variant), tiny_encoder)
    with torch.no_grad():
        expected = bare(**batch()).last_hidden_state
        found = tagger.encoder.eval()(**batch()).last_hidden_state
    torch.testing.assert_close(found, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name, variant", CASES, ids=IDS)
def test_exactly_its_parameters_train_as_many_as_its_formula(bench, tiny_encoder, name, variant):
    method = methods.METHODS[name]
    cfg = case_config(bench, name, variant)
    tagger, _ = built(cfg, tiny_encoder)
    trained = {n for n, p in tagger.encoder.named_parameters() if p.requires_grad}
    sizes = methods.Sizes.of(tagger.encoder.config)
    assert trained == {n for n, _ in tagger.encoder.named_parameters()
                       if re.search(method.trainable_pattern(cfg, sizes), n)}
    sources = [load_json(folder / "config.json") for folder in
               source_dirs(run_dir(cfg), cfg.seed, methods.sources_of(cfg))]
    assert sum(p.numel() for n, p in tagger.encoder.named_parameters() if n in trained) == \
        method.count(cfg, sizes, sources)
    head = sizes.hidden * len(LABELS) + len(LABELS)
    assert model.count_parameters(tagger)[0] == method.count(cfg, sizes, sources) + head


OPTIONS = {"plain": {}, "crf-aug": {"crf": True, "aug": {"p": 0.5, "copies": 0}}}


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("name, variant", CASES, ids=IDS)
def test_training_lowers_the_loss_and_predict_reproduces_the_run(bench, name, variant, options):
    cfg = case_config(bench, name, variant, **OPTIONS[options])
    cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{options}")
    metrics = train.train(cfg)
    losses = metrics["mean_loss_per_epoch"]
    assert losses[-1] < losses[0], losses
    folder = run_dir(cfg)
    tagger = predict.load_run(folder)
    blocks = [[line.split() for line in block.splitlines()]
              for block in (folder / "predictions.txt").read_text().strip().split("\n\n")]
    tokens = [[fields[0] for fields in block] for block in blocks]
    assert tagger.tag(tokens) == [[fields[2] for fields in block] for block in blocks]
    # The encoder computes something else than at step 0: what the method trains did train.
    # (Every method's start is deterministic: zero-initialised updates, or the plain average.)
    if any(p.requires_grad for p in tagger.model.encoder.parameters()):
        fresh, _ = built(cfg, Path(cfg.model))
        with torch.no_grad():
            start = fresh.encoder.eval()(**batch()).last_hidden_state
            trained = tagger.model.encoder(**batch()).last_hidden_state
        assert not torch.equal(trained, start)


@pytest.mark.parametrize("name, variant", CASES, ids=IDS)
def test_bf16_frozen_base_trains_under_autocast(bench, tiny_encoder, name, variant):
    cfg = case_config(bench, name, variant)
    reference, _ = built(cfg, tiny_encoder)
    tagger, _ = built(cfg, tiny_encoder)
    tagger.load_state_dict(reference.state_dict())
    model.cast_frozen(tagger.encoder, torch.bfloat16)
    for n, p in tagger.named_parameters():
        if p.is_floating_point():
            kept = p.requires_grad or "LayerNorm" in n  # LayerNorms stay fp32 (cast_frozen)
            assert p.dtype == (torch.float32 if kept else torch.bfloat16), n
    word_index = torch.tensor([[1, 2, 5], [1, 3, 4], [2, 6, 8]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emissions = tagger.train()(**batch(), word_index=word_index)  # (B, W, K)
    emissions.float().pow(2).mean().backward()
    for n, p in tagger.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32, n
    with torch.no_grad():
        expected = reference.eval()(**batch(), word_index=word_index)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            found = tagger.eval()(**batch(), word_index=word_index).float()
    torch.testing.assert_close(found, expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name, variant", CASES, ids=IDS)
def test_gradient_checkpointing_changes_nothing_but_memory(bench, tiny_encoder, name, variant):
    plain, _ = built(case_config(bench, name, variant), tiny_encoder)
    checkpointed, _ = built(case_config(bench, name, variant, gradient_checkpointing=True),
                            tiny_encoder)
    checkpointed.load_state_dict(plain.state_dict())
    word_index = torch.tensor([[1, 2, 5], [1, 3, 4], [2, 6, 8]])
    for tagger in (plain, checkpointed):
        torch.manual_seed(0)  # the same dropout masks (recomputation replays the RNG state)
        tagger.train()(**batch(), word_index=word_index).pow(2).mean().backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for n, p in checkpointed.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], msg=n)


def other_value(key: str, value):
    """A valid value of `key` other than `value`."""
    if key in config_files.ALL_CHOICES:
        return next(v for v in config_files.ALL_CHOICES[key] if v != value)
    if isinstance(value, bool):
        return not value
    if value is None:  # a `bool | None` key left at "the kind's own"
        return True
    if key in ("fusion_weights",):
        return [0.25, 0.75]
    if key == "adapters":
        return list(reversed(value))
    if isinstance(value, list):
        return value[:1] if len(value) > 1 else value + ["value"]
    if isinstance(value, float):
        return value + 0.1 if value < 0.5 else value / 2
    if isinstance(value, int):
        return value + 1
    raise AssertionError(f"no other value for {key}={value!r}")


def fingerprint(cfg: config.Config) -> str:
    origins = {split: Origin("file", str(Path(cfg.dataset) / f"{split}.tsv"))
               for split in ("train", "devel", "test")}
    return digest(run_inputs(cfg, origins, ["x", "y"]))


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_each_own_key_changes_the_fingerprint_and_no_other_methods_key(bench, name):
    method = methods.METHODS[name]
    cfg = case_config(bench, name, 0)
    before = fingerprint(cfg)
    for key in method.keys:
        changed = dataclasses.replace(cfg, **{key: other_value(key, getattr(cfg, key))})
        if key == "adapters" or (key == "fusion_weights" and not cfg.fusion_weights):
            changed = dataclasses.replace(changed, fusion_weights=[0.25, 0.75])
        assert fingerprint(changed) != before, key
    for key, owner in methods.KEY_OWNERS.items():
        if owner != name:
            changed = dataclasses.replace(cfg, **{key: other_value(key, getattr(cfg, key))})
            assert fingerprint(changed) == before, key
