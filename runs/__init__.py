"""What one run reads and writes around the loop: its config files, its folder, its scores and
its live log. Below the loop, so that train.py, predict.py and the comparison all use them.

`config_files.py` fills a checked `config.Config` from YAML files, grids and command lines;
`folders.py` lays out run folders and writes every file whole or not at all; `scoring.py` scores
entities as seqeval does; `tracking.py` logs to TensorBoard or W&B when asked.
"""
