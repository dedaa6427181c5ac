"""text.py: the corpora's tokens and sentences from raw text, with exact character offsets."""

from __future__ import annotations

import pytest

from corpora import text


@pytest.mark.parametrize("raw, tokens", [
    ("Ca2+-induced", ["Ca2", "+", "-", "induced"]),
    ("a 56-year-old woman", ["a", "56", "-", "year", "-", "old", "woman"]),
    ("[Ca2+]i rose (p < .05).", ["[", "Ca2", "+", "]", "i", "rose", "(", "p", "<", ".", "05",
                                 ")", "."]),
    ("Na+/K+ ATPase", ["Na", "+", "/", "K", "+", "ATPase"]),
    ("β-blockers, 3.5 mg", ["β", "-", "blockers", ",", "3", ".", "5", "mg"]),
])
def test_tokens_are_word_runs_and_single_other_characters(raw, tokens):
    found = text.tokenize(raw)
    assert [t.text for t in found] == tokens
    assert all(raw[t.start:t.end] == t.text for t in found)


def test_offsets_count_from_the_given_offset():
    assert text.tokenize("ab c", 10) == [text.Token("ab", 10, 12), text.Token("c", 13, 14)]


@pytest.mark.parametrize("raw, sentences", [
    ("Aspirin helps. Fever fell.", ["Aspirin helps.", "Fever fell."]),
    ("Smith et al. found it (Fig. 2). The U.S. FDA agreed.",
     ["Smith et al. found it (Fig. 2).", "The U.S. FDA agreed."]),
    ("It was 3.5 mg. (Twice a day.) Then p.Val204Asp was seen.",
     ["It was 3.5 mg.", "(Twice a day.)", "Then p.Val204Asp was seen."]),
    ("Resistant to amphotericin B. Patterns differ.",
     ["Resistant to amphotericin B.", "Patterns differ."]),
    ("A title without a period\nThe abstract, e.g. this. 5 patients died.",
     ["A title without a period", "The abstract, e.g. this.", "5 patients died."]),
    ("lower case after. a period is not an end", ["lower case after. a period is not an end"]),
])
def test_sentences_end_where_english_ends_them(raw, sentences):
    spans = text.split_sentences(raw)
    assert [raw[a:b] for a, b in spans] == sentences
    found = [t for s in text.sentences(raw) for t in s]
    assert found == text.tokenize(raw)  # every token in exactly one sentence, same offsets


def test_join_tokens_gives_a_text_that_tokenises_back():
    tokens = ["The", "[", "Ca2", "+", "]", "i", "(", "p", "<", "0", ".", "05", ")", "of",
              "56", "-", "year", "-", "old", "A", "-", "T", "patients", "was", "2", ".", "6",
              "%", "."]
    joined = text.join_tokens(tokens)
    assert joined == "The [Ca2+] i (p < 0.05) of 56-year-old A-T patients was 2.6%."
    assert [t.text for t in text.tokenize(joined)] == tokens
    assert [joined[a:b] for a, b in text.split_sentences(joined)] == [joined]
