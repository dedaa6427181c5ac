"""Where sentences come from: corpus files and sources, hub datasets, tagging schemes, raw text.

`iob.py` reads two-column IOB files, `schemes.py` converts tagging schemes to BIO (and reads
mentions out of BIO tags), `sources.py` finds a named corpus in a data directory or downloads it
(and names what a split was read from), `hub.py` reads 🤗 Datasets datasets (`hf:...`) of
sentences, `bigbio.py` turns BigBio documents into sentences, and `text.py` cuts raw text into
the corpora's sentences and tokens. They import nothing else of the project: data.py turns what
they give into a run's corpus.
"""
