"""The ecosystem's file formats, both directions: what a run exports for other tools, and what
this project reads back from them.

`peft.py` is PEFT's adapter folder (LoRA, DoRA, IA3); `hf.py` transformers' token-classification
folder (export.py), and `card.py` its model card, the hub's README.md; `adapterhub.py`
AdapterHub's adapter folder with its tagging head (export.py --format adapterhub).
"""
