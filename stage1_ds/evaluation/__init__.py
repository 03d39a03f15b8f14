"""Evaluation: what a trained encoder is worth against the strongest simple rules that see the same bars.

- `reconstruction`: `stage1 evaluate`, masked-bar errors per masking mode against the simple rules of
  `stage1_ds.model.baselines`;
- `probe`: `stage1 probe`, future realised variance and direction from the encoder against the simple
  volatility rules of `volatility`, with the tests and intervals of `statistics`;
- `provenance`: the checks before scoring and what a report records of what it scored.

Nothing here trains: the experiments that train and then measure are `stage1_ds.experiments`.
"""

from stage1_ds.evaluation.probe import format_probe, probe, write_probe
from stage1_ds.evaluation.reconstruction import evaluate, format_report, write_report

__all__ = ["evaluate", "format_probe", "format_report", "probe", "write_probe", "write_report"]
