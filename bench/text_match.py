"""How closely corpora/text.py's tokeniser and sentence splitter reproduce the corpora's own.

    NER_DATA_DIR=../shared/data python bench/text_match.py [bc5cdr ncbi_disease ...]

For each corpus's test split:
- tokens: each sentence's text is rebuilt from its tokens (text.join_tokens: English spacing,
  punctuation joined to its neighbours), tokenised again, and counted a match when the tokens
  are exactly the corpus's;
- sentences: each pair of consecutive sentences is rebuilt as one text (a space between them),
  split again, and counted a match when it gives back exactly the two sentences.
Sentences whose own text the splitter would cut (the corpus did not split there) count against
the second share as well. Prints both shares and a few of the misses.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import sources, text
from corpora.iob import read_iob


def measure(dataset: str) -> dict:
    paths = sources.find_corpus(dataset, os.environ.get(sources.DATA_DIR_ENV))
    sentences = [s.tokens for s in read_iob(paths["test"])]
    token_misses = [s for s in sentences if [t.text for t in text.tokenize(text.join_tokens(s))]
                    != s]
    pair_misses = []
    for first, second in itertools.pairwise(sentences):
        joined = text.join_tokens(first) + " " + text.join_tokens(second)
        found = [[t.text for t in tokens] for tokens in text.sentences(joined)]
        if found != [first, second]:
            pair_misses.append(found)
    return {"sentences": len(sentences), "tokens_match": 1 - len(token_misses) / len(sentences),
            "pairs": len(sentences) - 1,
            "split_match": 1 - len(pair_misses) / (len(sentences) - 1),
            "token_misses": token_misses[:3], "split_misses": pair_misses[:5]}


def main(names: list[str]) -> None:
    for name in names or ["bc5cdr", "ncbi_disease"]:
        result = measure(name)
        print(f"{name} test: {result['sentences']:,} sentences, tokens rebuilt exactly in "
              f"{100 * result['tokens_match']:.2f}%; {result['pairs']:,} consecutive pairs, "
              f"split back exactly in {100 * result['split_match']:.2f}%")
        for miss in result["split_misses"]:
            print("  split differently:", " | ".join(" ".join(s) for s in miss)[:200])


if __name__ == "__main__":
    main(sys.argv[1:])
