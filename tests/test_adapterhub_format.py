"""export.py --format adapterhub and formats/adapterhub.py: a finished run of every adapter
variant of the conformance suite becomes the folder AdapterHub's `load_adapter` reads, with the
files, config fields and parameter names that adapters 1.3's own `save_adapter` writes (copied
below from what it wrote), the run's weights and its label names. Read back as its config says,
into our modules, the folder computes the tagger's emissions at each word's first subword.
Runs with no AdapterHub form, and bad input, are refused in one line, nothing written.

AdapterHub is not imported (CI does not have it; it pins an older transformers):
bench/adapterhub_export_check.py loads the folders into AdapterHub itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import test_export
import test_methods
import torch
from safetensors.torch import load_file
from test_export import fake_run, first_subwords, one_window, refused, sentences_of
from test_methods import CASES, IDS, case_config
from transformers import BertConfig

import export
import predict
from adapters import inject_adapters
from formats import adapterhub
from methods import METHODS
from model import load_encoder
from runs.folders import read_safetensors

bench = test_methods.bench  # the conformance suite's corpus and source runs (a fixture)
finished = test_export.finished  # a finished run of a case, trained once per module (a fixture)

WITH_FORM = [case for case in CASES if METHODS[case[0]].to_adapterhub is not None]
WITHOUT_FORM = [case for case in CASES if case not in WITH_FORM]

# adapter_config.json's "config" as adapters 1.3's save_adapter wrote it for SeqBnConfig()
SEQ_BN = {
    "adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0,
    "factorized_phm_W": True, "factorized_phm_rule": False,
    "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "bert",
    "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None,
    "is_parallel": False, "learn_phm": True, "leave_out": [], "ln_after": False,
    "ln_before": False, "mh_adapter": False, "non_linearity": "relu", "original_ln_after": True,
    "original_ln_before": True, "output_adapter": True, "phm_bias": True, "phm_c_init": "normal",
    "phm_dim": 4, "phm_init_range": 0.0001, "phm_layer": False, "phm_rank": 1,
    "reduction_factor": 16, "residual_before_ln": True, "scaling": 1.0, "shared_W_phm": False,
    "shared_phm_rule": True, "stochastic_depth": 0.0, "use_gating": False,
}
# ... and for DoubleSeqBnConfig() and ParBnConfig(), where they differ from it
HUB_CONFIGS = {
    "pfeiffer": SEQ_BN,
    "houlsby": {**SEQ_BN, "mh_adapter": True, "non_linearity": "swish",
                "original_ln_before": False},
    "parallel": {**SEQ_BN, "init_weights": "mam_adapter", "is_parallel": True,
                 "original_ln_before": False, "reduction_factor": 2, "scaling": 4.0},
}
# our keys -> AdapterHub's fields
HUB_FIELDS = {"reduction": "reduction_factor", "original_ln_before": "original_ln_before",
              "non_linearity": "non_linearity", "adapter_scaling": "scaling"}
# AdapterHub's parameters of an adapter -> ours
OUR_PARTS = {"adapter_down.0.weight": "down.weight", "adapter_down.0.bias": "down.bias",
             "adapter_up.weight": "up.weight", "adapter_up.bias": "up.bias"}
FILES = {"adapter_config.json", "pytorch_adapter.bin", "adapter.safetensors",
         "head_config.json", "pytorch_model_head.bin", "model_head.safetensors"}


def ids(cases):
    return [IDS[CASES.index(case)] for case in cases]


def exported(run: Path, out: Path, capsys) -> Path:
    assert export.main([str(run), str(out), "--format", "adapterhub"]) == 0, \
        capsys.readouterr().err
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def expected_config(kind: str, variant: dict, reduction: int) -> dict:
    """What AdapterHub's config of the kind, with the variant's settings, holds: the run's
    reduction (ParBnConfig's own default is 2)."""
    settings = {HUB_FIELDS[key]: value for key, value in variant.items() if key in HUB_FIELDS}
    return {**HUB_CONFIGS[kind], "reduction_factor": reduction, **settings}


@pytest.mark.parametrize("name, variant", WITH_FORM, ids=ids(WITH_FORM))
def test_the_folder_is_adapterhubs_with_the_runs_weights_and_labels(finished, tmp_path, capsys,
                                                                    name, variant):
    run = finished(name, variant)
    folder = exported(run, tmp_path / "adapter", capsys)
    tagger = predict.load_run(run)
    cfg, encoder = tagger.config, tagger.model.encoder
    assert {p.name for p in folder.iterdir()} == FILES
    hub_name = adapterhub.adapter_name(cfg.name)

    # The two config files: AdapterHub's fields, the kind's values, the run's labels
    settings = METHODS[name].variants[variant]
    for file in ("adapter_config.json", "head_config.json"):
        config = read_json(folder / file)
        assert {k: v for k, v in config.items() if k != "config"} == {
            "hidden_size": encoder.config.hidden_size, "model_class": "BertAdapterModel",
            "model_name": cfg.model, "model_type": "bert", "name": hub_name,
            "version": "adapters.1.3.0"}
    assert read_json(folder / "adapter_config.json")["config"] == \
        expected_config(settings["adapter_kind"], settings, cfg.reduction)
    assert read_json(folder / "head_config.json")["config"] == {
        "head_type": "tagging", "num_labels": len(tagger.labels), "layers": 1,
        "activation_function": "tanh", "dropout_prob": cfg.dropout,
        "label2id": {label: i for i, label in enumerate(tagger.labels)}}

    # The weights: AdapterHub's names, the run's values, the same in both files
    blocks = ["attention.output", "output"] if settings["adapter_kind"] == "houlsby" else \
        ["output"]
    adapter = torch.load(folder / "pytorch_adapter.bin", weights_only=True)
    assert set(adapter) == {f"bert.encoder.layer.{i}.{block}.adapters.{hub_name}.{part}"
                            for i in range(encoder.config.num_hidden_layers)
                            for block in blocks for part in OUR_PARTS}
    head = torch.load(folder / "pytorch_model_head.bin", weights_only=True)
    assert set(head) == {f"heads.{hub_name}.1.weight", f"heads.{hub_name}.1.bias"}
    saved, _ = read_safetensors(run / "weights.safetensors")  # what the run trained
    for key, tensor in adapter.items():
        block, part = re.fullmatch(rf"bert\.(.+)\.adapters\.{hub_name}\.(.+)", key).groups()
        assert torch.equal(tensor, saved[f"encoder.{block}.adapter.{OUR_PARTS[part]}"]), key
    assert torch.equal(head[f"heads.{hub_name}.1.weight"], saved["head.weight"])  # (K, H)
    assert torch.equal(head[f"heads.{hub_name}.1.bias"], saved["head.bias"])
    for pickled, safe in (("pytorch_adapter.bin", "adapter.safetensors"),
                          ("pytorch_model_head.bin", "model_head.safetensors")):
        tensors = torch.load(folder / pickled, weights_only=True)
        assert {k: t.tolist() for k, t in tensors.items()} == \
            {k: t.tolist() for k, t in load_file(str(folder / safe)).items()}


def read_as_adapterhub(folder: Path, base: str):
    """What `load_adapter(folder, with_head=True)` builds, with our modules in place of
    AdapterHub's (bench/adapterhub_check.py holds the two equal): the kind from mh_adapter and
    is_parallel, its options from their fields, the tensors renamed back; the tagging head, a
    linear over every subword, and its labels from label2id."""
    adapter = read_json(folder / "adapter_config.json")
    config, name = adapter["config"], adapter["name"]
    kind = "houlsby" if config["mh_adapter"] else "parallel" if config["is_parallel"] else \
        "pfeiffer"
    encoder = load_encoder(base)[0].eval()
    inject_adapters(encoder, kind, config["reduction_factor"], config["original_ln_before"],
                    config["non_linearity"], config["scaling"])
    state = {}
    for key, tensor in torch.load(folder / "pytorch_adapter.bin", weights_only=True).items():
        block, part = re.fullmatch(rf"bert\.(.+)\.adapters\.{name}\.(.+)", key).groups()
        state[f"{block}.adapter.{OUR_PARTS[part]}"] = tensor
    problems = encoder.load_state_dict(state, strict=False)
    assert not problems.unexpected_keys and \
        not [k for k in problems.missing_keys if ".adapter." in k]
    head_config = read_json(folder / "head_config.json")["config"]
    head = torch.nn.Linear(encoder.config.hidden_size, head_config["num_labels"])
    tensors = torch.load(folder / "pytorch_model_head.bin", weights_only=True)
    head.load_state_dict({part: tensors[f"heads.{name}.1.{part}"] for part in ("weight", "bias")})
    labels = sorted(head_config["label2id"], key=head_config["label2id"].get)
    return encoder, head, labels


@pytest.mark.parametrize("name, variant", WITH_FORM, ids=ids(WITH_FORM))
def test_the_folder_computes_the_taggers_emissions_at_first_subwords(finished, tmp_path, capsys,
                                                                     name, variant):
    run = finished(name, variant)
    folder = exported(run, tmp_path / "adapter", capsys)
    tagger = predict.load_run(run)
    encoder, head, labels = read_as_adapterhub(folder, tagger.config.model)
    assert labels == tagger.labels
    sentences = [s for s in sentences_of(run) if one_window(tagger, s)]
    assert len(sentences) >= 8  # of the suite's 12
    predicted = []
    for tokens in sentences:
        encoded = tagger.tokenizer(tokens, is_split_into_words=True, return_tensors="pt")
        firsts = first_subwords(encoded.word_ids())
        with torch.no_grad():
            scores = head(encoder(**encoded).last_hidden_state)[0]  # (T, K): every subword
            emissions = tagger.model(encoded["input_ids"], encoded["attention_mask"],
                                     torch.tensor([firsts]))[0]  # (W, K)
        torch.testing.assert_close(scores[firsts], emissions, rtol=1e-5, atol=1e-5)
        predicted.append([labels[k] for k in scores[firsts].argmax(-1).tolist()])
    assert predicted == tagger.tag(sentences)


def test_the_adapter_is_named_after_the_experiment_as_a_module_name_can_hold():
    assert adapterhub.adapter_name("adapter-r16") == "adapter-r16"
    assert adapterhub.adapter_name("sweep.v2/adapter r8") == "sweep_v2_adapter_r8"


def test_an_encoder_outside_bert_is_refused():
    other = BertConfig(hidden_size=8, num_attention_heads=2)
    other.model_type = "roberta"
    with pytest.raises(ValueError, match="BertAdapterModel"):
        adapterhub.config_file({}, "ner", other, "roberta-base")


# ---------------------------------------------------------------------------------------------
# Refusals and bad input: one line, exit status 2, nothing written


@pytest.mark.parametrize("name, variant", WITHOUT_FORM, ids=ids(WITHOUT_FORM))
def test_a_method_without_an_adapterhub_form_is_refused(bench, tmp_path, capsys, name, variant):
    """Why, and what works instead: --format hf where the run exports so, else predict.py."""
    cfg = case_config(bench, name, variant)
    run = fake_run(tmp_path / "run", cfg, metrics_json="{}")
    line = refused([str(run), str(tmp_path / "adapter"), "--format", "adapterhub"], capsys,
                   tmp_path)
    assert f"method {name} cannot be an AdapterHub adapter" in line
    assert f"gives {name} no AdapterHub form" in line
    assert ("--format hf" in line) == (export.refusal(cfg) == "")
    assert ("predict.py" in line) == (export.refusal(cfg) != "")


def test_a_crf_head_is_refused_and_an_adapter_for_hf_points_here(bench, tmp_path, capsys):
    run = fake_run(tmp_path / "crf", case_config(bench, "adapter", 0, crf=True),
                   metrics_json="{}")
    line = refused([str(run), str(tmp_path / "adapter"), "--format", "adapterhub"], capsys,
                   tmp_path)
    assert "with crf cannot be an AdapterHub adapter" in line
    assert "CRF" in line and "predict.py" in line
    run = fake_run(tmp_path / "plain", case_config(bench, "adapter", 0), metrics_json="{}")
    line = refused([str(run), str(tmp_path / "tagger")], capsys, tmp_path)
    assert "cannot be a plain BERT tagger" in line and "--format adapterhub" in line


def test_bad_input_is_one_line_and_writes_nothing(bench, tmp_path, capsys):
    cfg = case_config(bench, "adapter", 0)
    done = fake_run(tmp_path / "done", cfg, metrics_json="{}")
    full = tmp_path / "full"
    full.mkdir()
    (full / "kept.txt").write_text("mine")
    cases = {
        "not a finished run": [fake_run(tmp_path / "unfinished", cfg), tmp_path / "a"],
        "a failed run (record.json: loss is nan": [
            fake_run(tmp_path / "failed", cfg, metrics_json="{}",
                     record_json='{"status": "failed", "reason": "loss is nan"}'),
            tmp_path / "b"],
        "exists and is not empty": [done, full],
    }
    for words, (run, out) in cases.items():
        line = refused([str(run), str(out), "--format", "adapterhub"], capsys, tmp_path)
        assert words in line, words
    assert (full / "kept.txt").read_text() == "mine"
