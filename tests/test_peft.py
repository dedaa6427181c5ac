"""formats/peft.py: PEFT's adapter folder both ways, held to peft 0.21 itself. LoRA, DoRA and IA3
folders we write are read by PeftModel.from_pretrained and reproduce our encoder; folders peft
writes are read back into ours; options we cannot reproduce are refused before anything is
injected."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_bert
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from test_ia3 import hidden as ia3_hidden
from test_ia3 import randomise as randomise_ia3
from test_lora import (
    DEFAULT_TARGETS,
    FFN_TARGETS,
    dora_bert,
    hidden,
    lora_bert,
    make_batch,
    randomise_b,
)

import ia3
from formats import peft
from lora import lora_layers
from runs.folders import write_folder_atomic


def export(files: dict[str, bytes], folder):
    """The folder a run writes: `files` whole, in place of `folder`."""
    write_folder_atomic(folder, files)
    return folder


@pytest.mark.parametrize(
    ("targets", "rslora", "alpha"),
    [(DEFAULT_TARGETS, False, 32.0), (("query", "value"), True, 8.0), (FFN_TARGETS, False, 4.0)],
)
def test_lora_export_is_read_by_peft(tmp_path, targets, rslora, alpha):
    model, batch = lora_bert(targets, rank=4, alpha=alpha, rslora=rslora), make_batch()
    folder = export(peft.lora_files(model, "tiny-bert"), tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(make_tiny_bert(), folder).eval()
    with torch.no_grad():
        expected = hidden(model, batch)
        assert not torch.allclose(hidden(make_tiny_bert().eval(), batch), expected, atol=1e-3)
        torch.testing.assert_close(hidden(peft_model, batch), expected, atol=1e-5, rtol=1e-5)


def test_lora_export_writes_peft_key_names(tmp_path):
    peft_model = get_peft_model(make_tiny_bert(), LoraConfig(r=4, target_modules=["query"]))
    peft_model.save_pretrained(tmp_path / "peft")
    export(peft.lora_files(lora_bert(("query",)), "tiny-bert"), tmp_path / "ours")
    theirs, ours = (load_file_keys(tmp_path / sub / peft.WEIGHTS) for sub in ("peft", "ours"))
    assert ours == theirs
    config = json.loads((tmp_path / "ours" / peft.CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] is None


def load_file_keys(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_an_export_replaces_the_folder_whole(tmp_path):
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "stale.txt").write_text("from an earlier export")
    export(peft.lora_files(lora_bert(), "tiny-bert"), folder)
    assert sorted(p.name for p in folder.iterdir()) == [peft.CONFIG, peft.WEIGHTS]
    assert [p.name for p in tmp_path.iterdir()] == ["peft"]  # no temporary folder left over


@pytest.mark.parametrize("use_rslora", [False, True])
def test_import_lora_reproduces_a_real_peft_model(tmp_path, use_rslora):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=use_rslora)
    peft_model = get_peft_model(make_tiny_bert(), config)
    randomise_b(peft_model, seed=2)
    peft_model.save_pretrained(tmp_path)
    model, batch = make_tiny_bert(), make_batch()
    names = peft.import_lora(model, tmp_path)
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
        ("rank_pattern", {"query": 8}),
        ("alpha_pattern", {"value": 2}),
        ("init_lora_weights", "pissa"),
        ("target_modules", "all-linear"),
    ],
)
def test_import_lora_rejects_unsupported_options(tmp_path, field, value):
    get_peft_model(make_tiny_bert(), LoraConfig(r=4, target_modules=["query"])).save_pretrained(
        tmp_path
    )
    path = tmp_path / peft.CONFIG
    path.write_text(json.dumps(json.loads(path.read_text()) | {field: value}))
    model = make_tiny_bert()
    with pytest.raises(ValueError, match=field):
        peft.import_lora(model, tmp_path)
    assert not lora_layers(model)  # rejected before injecting anything


def test_dora_export_is_read_by_peft_and_imports_back(tmp_path):
    model, batch = dora_bert(magnitude=0.9), make_batch()
    folder = export(peft.lora_files(model, "tiny-bert"), tmp_path / "peft")
    assert json.loads((folder / peft.CONFIG).read_text())["use_dora"] is True
    peft_model = PeftModel.from_pretrained(make_tiny_bert(), folder).eval()
    back = make_tiny_bert()
    peft.import_lora(back, folder)
    with torch.no_grad():
        expected = hidden(model.eval(), batch)
        torch.testing.assert_close(hidden(peft_model, batch), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden(back.eval(), batch), expected, atol=1e-6, rtol=1e-6)


def test_ia3_export_is_read_by_peft(tmp_path):
    model = make_tiny_bert()
    ia3.inject_ia3(model)
    randomise_ia3(model)
    folder = export(peft.ia3_files(model, "tiny-bert"), tmp_path / "peft")
    loaded = PeftModel.from_pretrained(make_tiny_bert(), folder)
    torch.testing.assert_close(ia3_hidden(loaded), ia3_hidden(model), atol=1e-6, rtol=1e-6)
