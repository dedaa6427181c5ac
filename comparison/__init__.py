"""The machinery that runs a comparison and reports it; a reader of the methods never needs it.

`compare.py` drives it: `sweep.py` plans the runs and keeps their records, `fingerprint.py`
says what each run's result depends on, `preflight.py` checks every input before the first run,
`runner.py` trains each run in a process of its own, and `report.py` turns the records into the
table (with `significance.py`'s paired bootstrap and `plots.py`'s figures). `slurm.py` submits a
sweep's shards to a cluster.
"""
