"""Experiments: the runs behind docs/quality.md, which train, convert and then measure.

This package sits above `stage1_ds.evaluation` (which measures and imports no training code) and
`stage1_ds.train`; ``scripts/quality_report.py`` calls it.

- `quality`: the main report (with and without the cross-timeframe loss), the variant sets and the
  transfer report;
- `ladder`: the budget ladder, the pretraining signals at several step counts on one corpus with held-out
  instruments.
"""
