"""Experiments: the runs behind the quality reports (docs/quality.md and the files it links), which train,
convert and then measure.

This package sits above `stage1_ds.evaluation` (which measures and imports no training code) and
`stage1_ds.train`. `harness` runs an experiment and writes the files it owns; `registry` lists them, one
module each; `tables` holds the markdown tables several reports share.
"""
