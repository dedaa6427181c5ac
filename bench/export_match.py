"""How closely an exported folder's pipeline agrees with predict.py on a run's test sentences.

    python export.py outputs/demo_cpu/lora-r16/seed42 /tmp/tagger
    python bench/export_match.py outputs/demo_cpu/lora-r16/seed42 /tmp/tagger

Every test sentence of the run (its predictions.txt) goes through transformers' pipeline
(`aggregation_strategy="first"`) twice: its tokens joined by spaces, and as text with English
spacing (corpora/text.join_tokens: `Cocaine-induced`, `(p < 0.05)`), whose tokens
corpora/text.tokenize gives back. A sentence agrees when the pipeline's entities (start, end,
type) are those of predict.py's tags on its tokens. Sentences longer than the run's windows
(`max_length` subwords) are counted apart: predict.py tags them window by window, the pipeline
whole. Also counts the test tokens that BERT cuts into more than one word. Prints the shares and
the first few disagreements.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import text
from corpora.schemes import mention_spans
from predict import load_run


def entities(tokens: list, tags: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) of the tags' entities, from the tokens' offsets (corpora/text.Token)."""
    return [(tokens[first].start, tokens[end - 1].end, kind)
            for first, end, kind in mention_spans(tags)]


def main(run_dir: str, export_dir: str) -> None:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tagger = load_run(run_dir)
    pipe = pipeline("token-classification", model=export_dir, aggregation_strategy="first")
    blocks = (Path(run_dir) / "predictions.txt").read_text(encoding="utf-8").strip().split("\n\n")
    sentences = [[line.split(" ")[0] for line in block.splitlines()] for block in blocks]
    started = time.perf_counter()
    tags = tagger.tag(sentences)
    tagged = time.perf_counter() - started
    pieces = tagger.tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    cut = sum(len(set(pipe.tokenizer(" ".join(s)).word_ids()) - {None}) != len(s)
              for s in sentences)
    counts = {"spaced": [0, 0], "english": [0, 0]}  # agreed, of; within one window
    long_counts = {"spaced": [0, 0], "english": [0, 0]}
    misses = []
    started = time.perf_counter()
    for i, (tokens, predicted) in enumerate(zip(sentences, tags)):
        fits = len(pieces["input_ids"][i]) + 2 <= tagger.max_length
        spaced = " ".join(tokens)
        english = text.join_tokens(tokens)
        for kind, sentence in (("spaced", spaced), ("english", english)):
            offsets = text.tokenize(sentence)
            if [t.text for t in offsets] != tokens:
                continue  # text.tokenize does not give this sentence's tokens back
            expected = entities(offsets, predicted)
            found = [(e["start"], e["end"], e["entity_group"]) for e in pipe(sentence)]
            bucket = (counts if fits else long_counts)[kind]
            bucket[0] += found == expected
            bucket[1] += 1
            if found != expected and len(misses) < 5:
                misses.append((kind, sentence, expected, found))
    piped = time.perf_counter() - started
    print(f"{run_dir}: {len(sentences)} test sentences, {sum(map(len, sentences)):,} tokens; "
          f"sentences with a token BERT cuts in two or more words: {cut}")
    for kind, (agreed, total) in counts.items():
        long_agreed, long_total = long_counts[kind]
        print(f"  {kind:8s} within {tagger.max_length} subwords: {agreed}/{total} agree; "
              f"longer: {long_agreed}/{long_total}")
    print(f"  predict.py tagged them in {tagged:.1f} s, the pipeline (one sentence a call, "
          f"both spacings) in {piped:.1f} s")
    for kind, sentence, expected, found in misses:
        print(f"  {kind}: {sentence}\n    predict.py {expected}\n    pipeline   {found}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/export_match.py RUN_DIR EXPORT_DIR")
    main(sys.argv[1], sys.argv[2])
